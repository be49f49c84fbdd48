"""`freshnets db upgrade` (the schema, by Alembic) and `freshnets keys create|revoke` (API keys)."""

from datetime import UTC, datetime

import typer

from app.settings import Settings, get_settings

db_app = typer.Typer(no_args_is_help=True, help="The database schema.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys (each belongs to an owner).")


def upgrade_database(settings: Settings | None = None, revision: str = "head") -> None:
    """Run the Alembic migrations on the settings' database (any working directory)."""
    from app.db.migrate import upgrade

    upgrade((settings or get_settings()).effective_database_url, revision)


@db_app.command("upgrade")
def db_upgrade(
    revision: str = typer.Argument("head", help="The revision to reach."),
) -> None:
    """Create or bring the schema up to date (SQLite in the data folder unless
    FRESHNETS_DATABASE_URL says otherwise)."""
    settings = get_settings()
    upgrade_database(settings, revision)
    typer.echo(f"database {settings.effective_database_url}: at {revision}")


@keys_app.command("create")
def keys_create(name: str = typer.Argument(..., help="The owner the key belongs to.")) -> None:
    """Print a new API key for owner NAME (created if new). It is shown only this once."""
    from app.db.engine import get_sessionmaker
    from app.security import create_api_key

    try:
        with get_sessionmaker()() as session:
            key = create_api_key(session, name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from exc
    typer.echo(key)


@keys_app.command("revoke")
def keys_revoke(
    prefix: str = typer.Argument(..., help="The key, or its first 10 characters."),
) -> None:
    """Revoke a key: requests with it answer 401 from now on."""
    from app.db.engine import get_sessionmaker
    from app.security import revoke_api_key

    with get_sessionmaker()() as session:
        count = revoke_api_key(session, prefix, datetime.now(UTC))
    if not count:
        typer.echo(f"no live key starts with {prefix[:10]!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {count} key(s)")


def register(cli: typer.Typer) -> None:
    """Add this module's commands to the `freshnets` entry point."""
    cli.add_typer(db_app, name="db")
    cli.add_typer(keys_app, name="keys")
