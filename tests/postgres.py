"""A PostgreSQL database of a test's own on the CI's throwaway cluster (.ci/run starts one and
sets FRESHNETS_TEST_POSTGRES_URL); without that variable the test is skipped."""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, make_url, text

POSTGRES_ENV = "FRESHNETS_TEST_POSTGRES_URL"


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty database named ``{prefix}_<random>``: its URL, dropped afterwards."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set (.ci/run starts a PostgreSQL cluster)")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
