"""Running the Alembic migrations from code, from any working directory."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

import migrations
from app.settings import get_settings

# __path__, not __file__: right for an installed, an editable and a namespace package alike.
MIGRATIONS_DIR = Path(next(iter(migrations.__path__)))


def alembic_config(url: str | None = None) -> Config:
    """A Config pointing into the installed `migrations` package, on `url` (default: settings)."""
    config = Config(MIGRATIONS_DIR / "alembic.ini")
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' is ConfigParser's interpolation character; a password may contain one.
    url = url or get_settings().effective_database_url
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at `url` (default: the settings') up to `revision`."""
    url = url or get_settings().effective_database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)
