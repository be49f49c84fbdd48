"""`freshnets datasets list|fetch`: what data sets exist, and putting one in the cache."""

import json
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from app.cli.output import console
from app.settings import get_settings

app = typer.Typer(no_args_is_help=True)


def _cache_dir(cache_dir: Path | None) -> Path:
    return cache_dir or get_settings().cache_dir


@app.command("list")
def list_command(
    cache_dir: Path | None = typer.Option(None, help="Data cache (default: the settings')."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the registered data sets and whether each is already on disk."""
    from freshcore.data import list_datasets

    infos = list_datasets(_cache_dir(cache_dir))
    if as_json:
        typer.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    table = Table(title="FreshNets data sets")
    for column in ("name", "shape", "classes", "train", "test", "on disk", "title"):
        table.add_column(column, no_wrap=column == "name")
    for i in infos:
        table.add_row(
            i.name,
            "x".join(map(str, i.input_shape)),
            str(i.num_classes),
            f"{i.train_size:,}",
            f"{i.test_size:,}",
            "yes" if i.available else "no",
            i.title,
        )
    console.print(table)


class _Bar:
    """Adapts freshcore's progress(stage, done, total) to one rich task per stage."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


@app.command("fetch")
def fetch_command(
    name: str = typer.Argument(..., help="A data set name (see `freshnets datasets list`)."),
    path: Path | None = typer.Option(
        None,
        "--path",
        help="A local copy to use first: a folder of IDX files (MNIST, "
        "Fashion-MNIST) or cifar-10-binary.tar.gz.",
    ),
    cache_dir: Path | None = typer.Option(None, help="Data cache (default: the settings')."),
) -> None:
    """Download, extract or generate data set NAME into the cache, verified by checksum."""
    from freshcore.data import DatasetNotFound, DatasetUnavailable, fetch

    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with bar:
            where = fetch(name, _cache_dir(cache_dir), progress=_Bar(bar), local_path=path)
    except DatasetNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except DatasetUnavailable as exc:
        typer.echo(f"error: {name} is not available: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{name}: ready at {where}")
