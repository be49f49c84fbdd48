"""CLI commands: stack (being written)."""

import typer


def register(cli: typer.Typer) -> None:
    """Add this module's commands to the `freshnets` entry point."""
