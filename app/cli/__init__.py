"""`freshnets`: one entry point; each group of commands lives in its own module."""

import typer

from app.cli import client, datasets, reproduce, service, stack

cli = typer.Typer(
    name="freshnets",
    help="Train and serve compressed CNNs with FreshNets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cli.add_typer(datasets.app, name="datasets", help="List and fetch data sets.")
service.register(cli)
stack.register(cli)
client.register(cli)
reproduce.register(cli)


def main() -> None:
    cli()
