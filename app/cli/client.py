"""CLI commands that train locally (`train`) or drive a FreshNets server over REST (`submit`,
`jobs`, `models`, `predict`, `upload`, `delete`, ...).

Errors end in one readable line on stderr and a non-zero exit, never a traceback: exit 1 for a
server or network problem (unreachable, wrong key, 5xx), exit 2 for a bad argument (the API's 4xx
message, or a local validation error).
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal, NoReturn

import httpx
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from app.cli.output import Column, console, err_console, print_listing
from app.db.models import ID_CHARS
from app.schemas import ID_PREFIX
from app.settings import get_settings

FINAL_STATES = {"succeeded", "failed", "cancelled"}
STATE_STYLES = {
    "queued": "dim",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
}

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="FRESHNETS_URL",
        help="The FreshNets server (default: the one `freshnets up` serves on this machine, "
        "http://FRESHNETS_HOST:FRESHNETS_PORT, 127.0.0.1:8000 unless set).",
        show_default=False,
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="FRESHNETS_API_KEY",
        help="API key (default: $FRESHNETS_API_KEY, else the key file `freshnets up` wrote).",
        show_default=False,
    ),
]
# How a model spreads its budget: the same flags for `train` (local) and `submit` (server).
AllocationOpt = Annotated[
    str | None,
    typer.Option(
        help="Buckets per frequency band (freshnets): uniform, exponential, beta, or JSON "
        """such as '{"shape": "exponential", "decay": 0.5}' (default: that one)."""
    ),
]
BudgetPolicyOpt = Annotated[
    str | None,
    typer.Option(
        help="Budget split across layers: conv-boost, or JSON such as "
        """'{"kind": "conv-boost", "conv_factor": 4}' (default: the same factor per layer)."""
    ),
]
WidthOpt = Annotated[
    float | None,
    typer.Option(
        help="Hidden widths as a multiple of the architecture's, in (0, 1]: the same stored "
        "budget over a narrower network (default: 1)."
    ),
]
BalancedOpt = Annotated[
    bool | None,
    typer.Option(
        "--balanced/--hashed",
        help="Hashed conv layers (freshnets, freshnets-uniform, hashednets) deal their weights "
        "evenly to the buckets instead of hashing each one (default: hashed).",
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]Error:[/] {message}", highlight=False)
    raise typer.Exit(code)


# ------------------------------------------------------------------------------------- REST


def _error_message(resp: httpx.Response) -> str:
    """The API's `detail` in one line; a 422 list becomes `field: message; ...`."""
    try:
        detail = resp.json().get("detail", resp.text)
    except ValueError:
        detail = resp.text.strip() or resp.reason_phrase
    if isinstance(detail, list):
        parts = []
        for item in detail:
            loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query", "path")]
            parts.append(f"{'.'.join(loc) or 'request'}: {item.get('msg', item)}")
        return "; ".join(parts)
    if isinstance(detail, dict):
        return str(detail.get("message") or detail)
    return str(detail)


class Api:
    """A small httpx wrapper that turns every failure into `fail(...)`."""

    def __init__(self, url: str | None, api_key: str | None) -> None:
        self.url = (url or get_settings().local_url).rstrip("/")
        self.key = api_key or self._key_from_file()
        self.client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=httpx.Timeout(60.0, connect=5.0),
        )

    @staticmethod
    def _key_from_file() -> str:
        path = get_settings().key_file
        try:
            key = path.read_text().strip()
        except OSError:
            fail(
                f"no API key: pass --api-key, set FRESHNETS_API_KEY, or start the stack with "
                f"`freshnets up` (which writes {path})"
            )
        if not key:
            fail(f"the key file {path} is empty")
        return key

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.client.request(method, path, **kwargs)
        except httpx.ConnectError:
            fail(f"cannot reach the FreshNets server at {self.url} (is it running? `freshnets up`)")
        except httpx.TimeoutException:
            fail(f"the server at {self.url} did not answer in time")
        except httpx.HTTPError as exc:
            fail(f"request to {self.url}{path} failed: {exc}")
        if resp.status_code == 401:
            fail(f"the server refused the API key ({_error_message(resp)})")
        if resp.status_code == 404:
            fail(_error_message(resp), 2)
        if 400 <= resp.status_code < 500:
            fail(f"{_error_message(resp)} (HTTP {resp.status_code})", 2)
        if resp.status_code >= 500:
            fail(f"the server failed (HTTP {resp.status_code}): {_error_message(resp)}")
        return resp

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs).json()

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs).json()

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    def page(self, path: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
        """A listing's items and how many match in all (`Page`: items, total, ...)."""
        page = self.get(path, params=params)
        return page["items"], page["total"]


def _items(data: Any) -> list[dict[str, Any]]:
    return data["items"] if isinstance(data, dict) and "items" in data else data


# ---------------------------------------------------------------------------------- formats


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def fmt_pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def fmt_compression(c: float | None) -> str:
    if c is None:
        return "-"
    if c >= 1:
        return "1"
    inv = 1 / c
    return f"1/{round(inv)}" if abs(inv - round(inv)) < 0.05 else f"{c:.4g}"


def _compression_arg(text: str) -> float | str:
    """A number stays a number; "1/64" goes as a string (the API parses both)."""
    try:
        return float(text)
    except ValueError:
        return text


def _json_option(text: str | None, flag: str) -> str | dict[str, Any] | None:
    """A JSON object, or a bare name (freshcore's short form); the server checks the contents."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("{"):
            fail(f"{flag}: not valid JSON ({exc.msg} at character {exc.pos})", 2)
        return text.strip()  # a name such as conv-boost
    if not isinstance(value, str | dict):
        fail(f"{flag}: give a name or a JSON object, got {text!r}", 2)
    return value


def _model_options(
    allocation: str | None, budget_policy: str | None, width: float | None, balanced: bool | None
) -> dict[str, Any]:
    """The flags given, as the API's ``model_options`` and `build_model`'s keywords; flags left
    out are left out, so freshcore's defaults apply."""
    options = {
        "allocation": _json_option(allocation, "--allocation"),
        "budget_policy": _json_option(budget_policy, "--budget-policy"),
        "width": width,
        "balanced": balanced,
    }
    return {k: v for k, v in options.items() if v is not None}


def _metrics_text(m: dict[str, Any] | None) -> str:
    if not m:
        return ""
    parts = [f"loss {m['train_loss']:.4f}", f"acc {fmt_pct(m['train_accuracy'], 1)}"]
    if m.get("val_accuracy") is not None:
        parts.append(f"val acc {fmt_pct(m['val_accuracy'], 1)}")
    return " · ".join(parts)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[metrics]}"),
        console=console,
    )


# ------------------------------------------------------------------------------- local train


def _pick_preset(shapes: dict[str, Any], input_shape: Any) -> str:
    """The preset made for this input shape, else one with the same channel count."""
    wanted = tuple(input_shape)
    for name, shape in shapes.items():
        if tuple(shape) == wanted:
            return name
    for name, shape in shapes.items():
        if shape[0] == wanted[0]:
            return name
    return next(iter(shapes))


def _size_table(report: dict[str, Any]) -> Table:
    table = Table(title="Size report", title_justify="left")
    table.add_column("layer")
    for col in ("virtual weights", "stored params", "compact", "dense", "ratio"):
        table.add_column(col, justify="right")

    def row(name: str, r: dict[str, Any], style: str | None = None) -> None:
        table.add_row(
            name,
            f"{r['virtual_weights']:,}",
            f"{r['stored_parameters']:,}",
            fmt_bytes(r["compact_bytes"]),
            fmt_bytes(r["dense_bytes"]),
            f"{r['ratio']:.4g}" if r.get("ratio") is not None else "-",
            style=style,
        )

    for i, layer in enumerate(report.get("layers", [])):
        row(f"{layer.get('index', i)} {layer.get('kind') or layer.get('type', '')}", layer)
    total = report.get("total", report)
    row("total", total, style="bold")
    return table


def train(
    dataset: Annotated[
        str,
        typer.Option(
            help="A built-in data set (`freshnets datasets list`), or your own: an .npz file or "
            "a folder of images with a sub-folder per class (docs/datasets.md)."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the compact model file."),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Architecture preset (default: the one made for the data set's shape)."),
    ] = None,
    method: Annotated[str, typer.Option(help="Compression method.")] = "freshnets",
    compression: Annotated[
        str, typer.Option(help='Stored / virtual weights, e.g. "1/64" or 0.125.')
    ] = "1/64",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    optimizer: Annotated[str, typer.Option(help="sgd or adam.")] = "sgd",
    lr: Annotated[float | None, typer.Option(help="Learning rate (default per optimizer).")] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    max_train_samples: Annotated[int | None, typer.Option(min=1)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    half: Annotated[bool, typer.Option(help="Store the weights as float16.")] = False,
    allocation: AllocationOpt = None,
    budget_policy: BudgetPolicyOpt = None,
    width: WidthOpt = None,
    balanced: BalancedOpt = None,
) -> None:
    """Train a compressed model locally (no server), then write it and print its size report."""
    import freshcore
    from freshcore import data as fdata

    if method not in freshcore.METHODS:
        fail(f"--method: unknown method {method!r} (one of {', '.join(freshcore.METHODS)})", 2)
    try:
        ratio = freshcore.parse_compression(compression)
    except ValueError as exc:
        fail(f"--compression: {exc}", 2)
    training: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "seed": seed,
        "device": device,
        "max_train_samples": max_train_samples,
    }
    try:
        config = freshcore.TrainConfig.from_dict(training)
    except ValueError as exc:
        fail(f"--{getattr(exc, 'field', 'training').replace('_', '-')}: {exc}", 2)

    options = _model_options(allocation, budget_policy, width, balanced)
    settings = get_settings()
    path = Path(dataset).expanduser() if _is_file_arg(dataset) else None  # your own data
    if path is not None and not path.exists():
        fail(f"--dataset: no such file or folder {dataset!r}", 2)
    try:
        with console.status(f"Loading data set {escape(dataset)}..."):
            if path is not None:
                loader = fdata.load_image_folder if path.is_dir() else fdata.load_npz
                ds = loader(path, name=path.resolve().stem)
            else:
                ds = fdata.load(dataset, cache_dir=settings.cache_dir)
    except fdata.UploadError as exc:
        fail(f"--dataset: {dataset}: {exc}", 2)
    except fdata.DatasetNotFound:
        names = ", ".join(i.name for i in fdata.list_datasets(settings.cache_dir))
        fail(f"--dataset: unknown data set {dataset!r} (built-in: {names})", 2)
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: DatasetUnavailable
        fail(f"cannot load data set {dataset!r}: {exc}")

    input_shape = tuple(ds.info.input_shape)
    if preset is None:
        shapes = {n: p.spec.input_shape for n, p in freshcore.PRESETS.items()}
        preset = _pick_preset(shapes, input_shape)
    try:
        model = freshcore.build_model(
            preset,
            method=method,
            compression=ratio,
            seed=seed,
            input_shape=input_shape,
            num_classes=ds.info.num_classes,
            **options,
        )
    except (KeyError, ValueError) as exc:
        fail(f"cannot build {preset!r} with {method} at {compression}: {exc}", 2)
    model.class_names = list(ds.info.class_names) if ds.info.class_names else None

    console.print(
        f"Training [bold]{preset}[/] on [bold]{escape(dataset)}[/] {input_shape} with "
        f"[bold]{method}[/] at {fmt_compression(ratio)} for {epochs} epochs"
        + (f", options {json.dumps(options)}" if options else ""),
        highlight=False,
    )
    with _progress() as progress:
        task = progress.add_task("train", total=epochs, metrics="")

        def on_batch(done: int, total: int) -> None:
            progress.update(task, description=f"train {done}/{total} batches")

        def on_epoch(m: Any, _checkpoint: Any) -> None:
            progress.update(
                task, completed=m.epoch, description="train", metrics=_metrics_text(m.to_dict())
            )

        try:
            result = freshcore.train(model, ds, config, on_epoch, on_batch=on_batch)
        except KeyboardInterrupt:
            fail("interrupted: nothing written", 130)
        except (RuntimeError, ValueError) as exc:
            fail(f"training failed: {exc}")

    model.meta.update(
        {
            "dataset": dataset,
            "training": config.to_dict(),
            "test_accuracy": result.test_accuracy,
            "best_epoch": result.best_epoch,
        }
    )
    factor = fmt_compression(ratio).replace("/", "o")
    out = output or Path(f"{ds.info.name}-{preset}-{method}-{factor}")
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    try:
        freshcore.save(model, out, half=half)
    except OSError as exc:
        fail(f"cannot write {out}: {exc}")

    report = freshcore.size_report(model).to_dict()
    console.print(_size_table(report))
    console.print(
        f"Test accuracy [bold]{fmt_pct(result.test_accuracy)}[/] (best epoch {result.best_epoch}, "
        f"{result.seconds:.1f} s). Wrote [bold]{out}[/] ({fmt_bytes(out.stat().st_size)}).",
        highlight=False,
    )


# ------------------------------------------------------------------------------ REST commands


@contextmanager
def _api(url: str | None, api_key: str | None) -> Iterator[Api]:
    client = Api(url, api_key)
    try:
        yield client
    finally:
        client.client.close()


def _follow(client: Api, job_id: str, poll_s: float) -> dict[str, Any]:
    """Show a job's progress until it ends; Ctrl-C stops watching (the job keeps running)."""
    job = client.get(f"/v1/jobs/{job_id}")
    with _progress() as progress:
        task = progress.add_task(job["state"], total=job.get("total_epochs") or None, metrics="")
        try:
            while True:
                progress.update(
                    task,
                    description=job["state"],
                    total=job.get("total_epochs") or None,
                    completed=job.get("epoch", 0),
                    metrics=_metrics_text(job.get("latest_metrics")),
                )
                if job["state"] in FINAL_STATES:
                    break
                time.sleep(poll_s)
                job = client.get(f"/v1/jobs/{job_id}")
        except KeyboardInterrupt:
            console.print(f"Stopped watching; the job goes on (`freshnets jobs`, id {job_id}).")
            raise typer.Exit(130) from None
    return job


def _job_body(job: dict[str, Any]) -> dict[str, Any]:
    """What a job was given, as a POST /v1/jobs body: `submit --like` starts from it."""
    body: dict[str, Any] = {
        "dataset": job["dataset"],
        "architecture": job.get("architecture_name") or job["architecture"],
        "method": job["method"],
        "compression": job["compression"],
        "training": dict(job["training"]),
        "seed": job["seed"],
        "init": job["init"],
    }
    if job.get("model_options"):
        options = {k: v for k, v in job["model_options"].items() if v is not None}
        if job["method"] != "freshnets":
            options.pop("allocation", None)  # the method's own (uniform for freshnets-uniform)
        body["model_options"] = options
    for field in ("teacher_model_id", "name"):
        if job.get(field) is not None:
            body[field] = job[field]
    return body


def _drop_untaken(options: dict[str, Any], method: str, keep: set[str]) -> list[str]:
    """Leave out of `options` (but for the `keep` keys) what `method` does not take, so `--like
    J --method dense` or `--method freshnets,dense --width 0.5` just works; returns what went."""
    if not set(options) - keep:
        return []  # nothing to judge: spare the client freshcore's import (torch, about 1 s)
    from freshcore.build import BALANCED_METHODS, parse_allocation

    untaken = {
        "allocation": method != "freshnets",  # only freshnets spreads buckets over bands
        "width": method in ("dense", "equivalent") and options.get("width", 1) != 1,
        "balanced": method not in BALANCED_METHODS and options.get("balanced", False),
    }
    dropped = []
    for key, drop in untaken.items():
        if drop and key in options and key not in keep:
            value = options.pop(key)
            if not (key == "allocation" and value == parse_allocation(None, "freshnets")):
                dropped.append(f"{key} {json.dumps(value)}")  # the default is no one's choice
    return dropped


def _choices(text: str | None, flag: str, parse: Callable[[str], Any] = str) -> list[Any]:
    """A flag's comma-separated values, each once, in order ([]: left out)."""
    if text is None:
        return []
    values = [v.strip() for v in text.split(",")]
    if not all(values):
        fail(f"{flag}: an empty value in {text!r}", 2)
    try:
        return list(dict.fromkeys(parse(v) for v in values))
    except ValueError:
        fail(f"{flag}: {text!r} is not a value or a comma-separated list of them", 2)


def _grid(
    body: dict[str, Any], methods: list[str], factors: list[Any], seeds: list[int], keep: set[str]
) -> list[tuple[dict[str, Any], str]]:
    """One body per method x compression x seed (a dense network stores every weight, so one
    per seed), each with what its method does not take left out, and that said in words."""
    bodies = []
    for method in methods or [body["method"]]:
        for factor in (factors or [body["compression"]])[: 1 if method == "dense" else None]:
            for seed in seeds or [body["seed"]]:
                one = {**body, "method": method, "compression": factor, "seed": seed}
                options = dict(body["model_options"])
                dropped = _drop_untaken(options, method, keep)
                one.pop("model_options")
                if options:  # none: the server's defaults, exactly as without options
                    one["model_options"] = options
                bodies.append((one, ", ".join(dropped)))
    return bodies


def _check_job_room(client: Api, count: int) -> None:
    """Refuse a grid the owner's FRESHNETS_MAX_ACTIVE_JOBS cannot take whole, before queueing
    any of it (GET /v1/usage); the server checks each job again."""
    usage = client.get("/v1/usage")
    active, limit = usage["active_jobs"], usage["max_active_jobs"]
    if limit and active + count > limit:
        fail(
            f"{count} jobs, but you have {active} queued or running of the {limit} "
            "FRESHNETS_MAX_ACTIVE_JOBS allows: queue fewer, or wait for some to end",
            2,
        )


def _job_factor(job: dict[str, Any]) -> str:
    """A job's factor: `dense` ignores the one asked and stores every weight."""
    return "1 (dense)" if job["method"] == "dense" else fmt_compression(job.get("compression"))


def _job_label(job: dict[str, Any]) -> str:
    """What sets a job of a grid apart: its method, factor and seed."""
    return f"{job['method']} {_job_factor(job)} · seed {job['seed']}"


def _follow_all(client: Api, jobs: list[dict[str, Any]], poll_s: float) -> None:
    """A progress bar per job until all have ended, then a table of their results; exit 1 if
    one did not succeed. Ctrl-C stops watching (the jobs keep running)."""
    with _progress() as progress:
        tasks = {j["id"]: progress.add_task(_job_label(j), total=None, metrics="") for j in jobs}
        try:
            while True:
                jobs = [client.get(f"/v1/jobs/{j['id']}") for j in jobs]
                for j in jobs:
                    progress.update(
                        tasks[j["id"]],
                        description=f"{_job_label(j)} · {j['state']}",
                        total=j.get("total_epochs") or None,
                        completed=j.get("epoch", 0),
                        metrics=_metrics_text(j.get("latest_metrics")),
                    )
                if all(j["state"] in FINAL_STATES for j in jobs):
                    break
                time.sleep(poll_s)
        except KeyboardInterrupt:
            console.print("Stopped watching; the jobs go on (`freshnets jobs`).")
            raise typer.Exit(130) from None
    columns = [
        Column("job", id=True),
        Column("method"),
        Column("comp."),
        Column("seed", right=True),
        Column("state"),
        Column("test acc", right=True),
        Column("compact", right=True, drop=1),
    ]
    rows = []
    for j in jobs:
        model = client.get(f"/v1/models/{j['model_id']}") if j.get("model_id") else {}
        rows.append(
            (
                j["id"],
                j["method"],
                _job_factor(j),
                str(j["seed"]),
                f"[{STATE_STYLES.get(j['state'], '')}]{j['state']}[/]",
                fmt_pct(model.get("test_accuracy")),
                fmt_bytes(model.get("compact_bytes")) if model else "–",
            )
        )
    print_listing(f"Jobs ({len(jobs)})", columns, rows)
    if failed := [j for j in jobs if j["state"] != "succeeded"]:
        fail(f"{len(failed)} of {len(jobs)} jobs did not succeed", 1)


def submit(
    dataset: Annotated[
        str | None,
        typer.Option(
            help="A built-in data set name, an upload's id (or a unique start), or a local "
            ".npz file, which is uploaded first (`freshnets upload`). Needed unless --like.",
            show_default=False,
        ),
    ] = None,
    like: Annotated[
        str | None,
        typer.Option(
            metavar="JOB_ID",
            help="Start from all that one of your jobs was given (`freshnets jobs`; a unique "
            "start of its id), changed by the options given here: e.g. --like 3f2a --method "
            "lowfreq. Model options the new method cannot take are left out, and named.",
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="Architecture preset (default: the one made for the data set's shape)."),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="Compression method (default: freshnets); several, comma-separated, queue a "
            "job each: --method freshnets,lowfreq,hashednets."
        ),
    ] = None,
    compression: Annotated[
        str | None,
        typer.Option(help='e.g. "1/64" (the default) or 0.125; several: 1/16,1/64, a job each.'),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (server default if left out).")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[
        str | None,
        typer.Option(help="The run's random seed (default: 0); several: 0,1,2, a job each."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Your label for the job and its model (not unique).")
    ] = None,
    allocation: AllocationOpt = None,
    budget_policy: BudgetPolicyOpt = None,
    width: WidthOpt = None,
    balanced: BalancedOpt = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            metavar="MODEL_ID",
            help="One of your models (`freshnets models`), usually a dense one: the student "
            "learns from its outputs (distillation) and, with --init project, starts from its "
            "projection. Without --preset the student takes the teacher's architecture.",
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="How the student starts: scratch, or project (the least-squares projection "
            "of a dense --teacher) (default: scratch).",
        ),
    ] = None,
    distill_alpha: Annotated[
        float | None,
        typer.Option(
            help="Weight of the teacher's softened outputs in the loss (server default 0.5); "
            "0 with --init project: projection only.",
        ),
    ] = None,
    follow: Annotated[bool, typer.Option(help="Follow the job's progress until it ends.")] = True,
    poll: Annotated[float, typer.Option(help="Seconds between progress polls.")] = 1.0,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Queue a training job on the server (POST /v1/jobs) and follow it to the end."""
    if dataset is None and like is None:
        fail("give --dataset (or --like JOB_ID to start from one of your jobs)", 2)
    training = {
        k: v
        for k, v in {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "distill_alpha": distill_alpha,
        }.items()
        if v is not None
    }
    options = _model_options(allocation, budget_policy, width, balanced)
    methods = _choices(method, "--method")
    factors = _choices(compression, "--compression", _compression_arg)
    seeds = _choices(seed, "--seed", int)
    given = {"name": name, "teacher_model_id": teacher, "init": init}
    given = {k: v for k, v in given.items() if v is not None}
    with _api(url, api_key) as client:
        base: dict[str, Any] = {
            "method": "freshnets",
            "compression": _compression_arg("1/64"),
            "seed": 0,
        }
        shape = None  # the input shape of the architecture the body holds, where known
        if like is not None:
            job_id = _whole_id(client, "jobs", like)
            source = client.get(f"/v1/jobs/{job_id}")
            base, shape = _job_body(source), source["architecture"].get("input_shape")
        body = {**base, **given, "training": {**base.get("training", {}), **training}}
        body["model_options"] = {**body.get("model_options", {}), **options}
        if dataset is not None:
            body["dataset"] = _dataset_arg(client, dataset)
        if preset is not None:
            body["architecture"] = preset
        elif teacher is not None:
            # The teacher's own network: what --init project needs, a fair student otherwise.
            body["architecture"] = client.get(f"/v1/models/{teacher}").get("architecture")
        elif like is None or dataset is not None:
            # The preset made for the data set's shape; under --like, only where the job's
            # network does not take the new data set's images.
            info = client.get(f"/v1/datasets/{body['dataset']}")
            wanted = info.get("input_shape")
            if wanted and (shape is None or tuple(shape) != tuple(wanted)):
                presets = _items(client.get("/v1/architectures"))
                shapes = {a["name"]: a["input_shape"] for a in presets}
                body["architecture"] = _pick_preset(shapes, wanted)
        body.setdefault("architecture", "mnist-cnn")
        # An option given for one method is sent as given, for the API to judge; in a grid,
        # or copied from a job, what a method does not take is left out for it, and named.
        keep = set(options) if len(methods) <= 1 else set()
        bodies = _grid(body, methods, factors, seeds, keep)
        if len(bodies) > 1:
            _check_job_room(client, len(bodies))
    if like is not None:
        console.print(f"Like job [bold]{job_id}[/]", highlight=False)
    queued = []
    with _api(url, api_key) as client:
        for one, dropped in bodies:
            job = client.post("/v1/jobs", json=one)
            queued.append(job)
            what = f" ({_job_label(job)})" if len(bodies) > 1 else ""
            note = f"; left out, as {one['method']} takes none: {dropped}" if dropped else ""
            console.print(f"Queued job [bold]{job['id']}[/]{what}{note}", highlight=False)
        if not follow:
            return
        if len(queued) > 1:
            return _follow_all(client, queued, poll)
        job = _follow(client, job["id"], poll)
    state = job["state"]
    style = STATE_STYLES.get(state, "")
    if state == "succeeded":
        acc = ""
        if job.get("model_id"):
            with _api(url, api_key) as client:
                model = client.get(f"/v1/models/{job['model_id']}")
            acc = (
                f": test accuracy {fmt_pct(model.get('test_accuracy'))}, "
                f"{fmt_bytes(model.get('compact_bytes'))} compact"
            )
        console.print(
            f"[{style}]succeeded[/] model [bold]{job.get('model_id')}[/]{acc}", highlight=False
        )
        return
    fail(f"job {job['id']} {state}" + (f": {job['error']}" if job.get("error") else ""))


def jobs(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    name: Annotated[
        str | None, typer.Option(help="Only jobs whose name contains this (any case).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """List your jobs."""
    params: dict[str, Any] = {"limit": limit}
    if state:
        params["state"] = state
    if name:
        params["name"] = name
    with _api(url, api_key) as client:
        rows, total = client.page("/v1/jobs", **params)
    columns = [
        Column("id", id=True),
        Column("name", drop=3),
        Column("data set", drop=5),
        Column("preset", drop=2),
        Column("method"),
        Column("comp.", drop=6),
        Column("state"),
        Column("epoch", right=True, drop=4),
        Column("val acc", right=True, drop=7),
        Column("created", drop=1),
    ]
    table = []
    for j in rows:
        latest = j.get("latest_metrics") or {}
        table.append(
            (
                j["id"],
                escape(j.get("name") or ""),
                _dataset_label(j),
                j.get("architecture_name") or "custom",
                j["method"],
                _job_factor(j),
                f"[{STATE_STYLES.get(j['state'], '')}]{j['state']}[/]",
                f"{j.get('epoch', 0)}/{j.get('total_epochs') or '?'}",
                fmt_pct(latest.get("val_accuracy"), 1),
                str(j.get("created_at", ""))[5:16].replace("T", " "),
            )
        )
    print_listing(f"Jobs ({total})", *_named(columns, table))


def models(
    dataset: Annotated[
        str | None,
        typer.Option(help="Only models of this data set (a built-in's name, an upload's id)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Only models whose name contains this (any case).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1)] = 100,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """List your trained models with their sizes and accuracy."""
    params: dict[str, Any] = {"limit": limit}
    if name:
        params["name"] = name
    with _api(url, api_key) as client:
        if dataset:
            params["dataset"] = _upload_id(client, dataset)
        rows, total = client.page("/v1/models", **params)
    columns = [
        Column("id", id=True),
        Column("name", drop=4),
        Column("data set", drop=5),
        Column("preset", drop=3),
        Column("method"),
        Column("asked", right=True, drop=2),
        Column("achieved", right=True, drop=6),
        Column("compact", right=True),
        Column("dense", right=True, drop=1),
        Column("test acc", right=True),
    ]
    table = []
    for m in rows:
        table.append(
            (
                m["id"],
                escape(m.get("name") or ""),
                _dataset_label(m),
                m.get("architecture_name") or "custom",
                m["method"],
                fmt_compression(m.get("compression_requested")),
                fmt_compression(m.get("compression_achieved")),
                fmt_bytes(m.get("compact_bytes")),
                fmt_bytes(m.get("dense_bytes")),
                fmt_pct(m.get("test_accuracy")),
            )
        )
    print_listing(f"Models ({total})", *_named(columns, table))


def _dataset_label(item: dict[str, Any]) -> str:
    """A job's or model's data set as a person reads it: a built-in's name, an upload's own
    name with the start of its id (names need not be unique), or the id of an upload deleted
    since."""
    dataset = item["dataset"]
    name = item.get("dataset_name", dataset)  # a server from before the field: the id
    if name == dataset:
        return dataset
    return f"{dataset[:8]} (deleted)" if name is None else f"{escape(name)} · {dataset[:8]}"


def _named(
    columns: list[Column], rows: list[tuple[str, ...]]
) -> tuple[list[Column], list[tuple[str, ...]]]:
    """A listing's columns and rows without the name column (the second) when no row has one."""
    if any(row[1] for row in rows):
        return columns, rows
    return [columns[0], *columns[2:]], [(row[0], *row[2:]) for row in rows]


def rename(
    model: Annotated[str, typer.Argument(help="The model id (`freshnets models`), or a start.")],
    name: Annotated[str, typer.Argument(help='Its new label ("" removes it).')],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Give a model a label of your own (PATCH /v1/models/ID)."""
    with _api(url, api_key) as client:
        model = _whole_id(client, "models", model)
        got = client.patch(f"/v1/models/{model}", json={"name": name})
    label = f"[bold]{escape(got['name'])}[/]" if got["name"] else "no label"
    console.print(f"Model [bold]{model}[/]: {label}", highlight=False)


def predict(
    model: Annotated[
        str, typer.Argument(help="The model id (`freshnets models`), or any unique start of it.")
    ],
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files.")],
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to show per image.")] = 3,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Classify images with a model on the server (multipart upload)."""
    files = []
    for path in images:
        try:
            content = path.read_bytes()
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror or exc}", 2)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        files.append(("images", (path.name, content, mime)))
    with _api(url, api_key) as client:
        model = _whole_id(client, "models", model)
        result = client.post(f"/v1/models/{model}/predict", params={"top_k": top_k}, files=files)
    table = Table(title=f"Predictions of {model}")
    table.add_column("image")
    for rank in range(1, top_k + 1):
        table.add_column(f"#{rank}")
    for path, pred in zip(images, result["predictions"], strict=False):
        table.add_row(os.fspath(path), *[_top_cell(t) for t in _top_k(pred, top_k)])
    console.print(table)


def _whole_id(client: Api, kind: Literal["models", "jobs"], given: str) -> str:
    """`given` if it is a whole id; else the id of the one model (or job) of yours that starts
    with it (the short ids of a narrow listing), or a usage error naming the matches."""
    if len(given) >= ID_CHARS or not re.fullmatch(ID_PREFIX, given):
        return given  # a whole id, or no id at all: the server says which
    items, total = client.page(f"/v1/{kind}", id_prefix=given, limit=5)
    found = [item["id"] for item in items]
    if not found:
        fail(f"none of your {kind} has an id starting with {given!r} (see `freshnets {kind}`)", 2)
    if len(found) > 1:
        fail(
            f"{given!r} starts the ids of {total} of your {kind} ({', '.join(found)}"
            f"{', ...' if total > len(found) else ''}): give more characters",
            2,
        )
    return found[0]


def cancel(
    job: Annotated[str, typer.Argument(help="The job id (`freshnets jobs`), or a unique start.")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Cancel a job: a queued one at once, a running one at its next batch."""
    with _api(url, api_key) as client:
        job = _whole_id(client, "jobs", job)
        got = client.post(f"/v1/jobs/{job}/cancel")
    if got["state"] == "cancelled":
        console.print(f"Job [bold]{job}[/] [yellow]cancelled[/]", highlight=False)
    else:
        console.print(f"Job [bold]{job}[/] stops at its next batch", highlight=False)


# ------------------------------------------------------------------------ uploads, deleting


class _Reading:
    """A file that moves a progress bar as httpx reads it. httpx sizes a file by its
    descriptor (so the upload keeps its Content-Length), then reads it in chunks."""

    def __init__(self, file: BinaryIO, advance: Callable[[int], None]) -> None:
        self.file, self.advance = file, advance

    def fileno(self) -> int:
        return self.file.fileno()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def read(self, size: int = -1) -> bytes:
        chunk = self.file.read(size)
        self.advance(len(chunk))
        return chunk


def _folder_npz(folder: Path, image_size: tuple[int, int] | None) -> BinaryIO:
    """A folder of images, one sub-folder per class (docs/datasets.md, "A folder of images"),
    packed here as an upload `.npz` in a temporary file; the server checks it as any upload."""
    import numpy as np

    from freshcore.data import UploadError, read_image_folder

    with console.status(f"reading the images under {escape(str(folder))}"):
        try:
            arrays = read_image_folder(folder, image_size)
        except UploadError as exc:
            fail(f"{folder}: {exc}", 2)
        packed = tempfile.TemporaryFile()  # noqa: SIM115 (`_upload` closes it)
        np.savez_compressed(packed, **arrays)
    packed.seek(0)
    return packed


def _upload(
    client: Api, path: Path, name: str | None, image_size: tuple[int, int] | None = None
) -> dict[str, Any]:
    """POST /v1/datasets with a bar of the bytes sent; the server then checks the whole file
    before it keeps it (docs/datasets.md, "`.npz` upload"), which the bar says. A folder is
    packed first; its upload is named after it."""
    if path.is_dir():
        file, name = _folder_npz(path, image_size), name or path.resolve().name
    else:
        try:
            file = path.open("rb")
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror or exc}", 2)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    with file:
        size = os.fstat(file.fileno()).st_size
        _check_room(client, path, size)
        with bar:
            task = bar.add_task(f"uploading {escape(path.name)}", total=size)

            def advance(n: int) -> None:
                bar.advance(task, n)
                if bar.tasks[task].completed >= size:
                    bar.update(task, description="checking it on the server")

            filename = path.name if path.suffix else f"{path.name}.npz"
            files = {"file": (filename, _Reading(file, advance), "application/octet-stream")}
            got = client.post("/v1/datasets", files=files, data={"name": name} if name else None)
    console.print(
        f"Uploaded [bold]{escape(got['name'])}[/] as [bold]{got['id']}[/]: "
        f"{got['num_classes']} classes, {'x'.join(map(str, got['input_shape']))}, "
        f"{got['train_size']:,} train / {got['test_size']:,} test, "
        f"{fmt_bytes(got['size_bytes'])}",
        highlight=False,
    )
    return got


def _check_room(client: Api, path: Path, size: int) -> None:
    """Refuse here, before sending, a file the server would refuse by its size (the limits of
    GET /v1/usage); the server checks again, so this only saves sending it in vain."""
    usage = client.get("/v1/usage")
    if size > (limit := usage["max_upload_bytes"]):
        fail(
            f"{path}: {fmt_bytes(size)} ({size:,} bytes), over the server's "
            f"FRESHNETS_MAX_UPLOAD_BYTES ({fmt_bytes(limit)})",
            2,
        )
    stored, limit = usage["stored_bytes"], usage["max_owner_bytes"]
    if limit and stored + size > limit:
        fail(
            f"{path}: {fmt_bytes(size)}, but you store {fmt_bytes(stored)} of the "
            f"{fmt_bytes(limit)} FRESHNETS_MAX_OWNER_BYTES allows; delete some models or "
            "uploads first (`freshnets models`, `freshnets uploads`, `freshnets delete`)",
            2,
        )


def _is_file_arg(given: str) -> bool:
    """A --dataset that names a local file or folder (an .npz, or any path) rather than a
    built-in data set's name or an upload's id."""
    return given.lower().endswith(".npz") or os.sep in given


def _image_size_arg(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    if not (found := re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)):
        fail(f"--image-size: give HEIGHTxWIDTH such as 28x28, got {text!r}", 2)
    return int(found[1]), int(found[2])


def _upload_id(client: Api, given: str) -> str:
    """`given` if it is a data set's whole id or name; else the id of the one upload of yours
    that starts with it, or a usage error naming the matches."""
    listed = _items(client.get("/v1/datasets"))
    if any(d["id"] == given for d in listed) or not re.fullmatch(ID_PREFIX, given):
        return given  # the server says what is wrong with anything else
    found = [d["id"] for d in listed if not d["builtin"] and d["id"].startswith(given)]
    if len(found) > 1:
        fail(f"{given!r} starts the ids of {len(found)} uploads ({', '.join(found)}): give more", 2)
    return found[0] if found else given


def _dataset_arg(client: Api, given: str) -> str:
    """What `submit --dataset` names, as the API's data set id: a local file is uploaded."""
    if _is_file_arg(given):
        path = Path(given).expanduser()
        if not path.exists():
            fail(f"--dataset: no such file or folder {given!r}", 2)
        return _upload(client, path, None)["id"]
    return _upload_id(client, given)


def upload(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="FILE_OR_FOLDER",
            help="An .npz (x, y; optional x_test, y_test, classes), or a folder of images with "
            "one sub-folder per class (docs/datasets.md).",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(help="Its name (default: the file's name without .npz, or the folder's)."),
    ] = None,
    image_size: Annotated[
        str | None,
        typer.Option(
            metavar="HxW", help="A folder's images resized to this, e.g. 28x28 (default: as is)."
        ),
    ] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Upload a data set of your own to the server (POST /v1/datasets), to train on by its id."""
    size = _image_size_arg(image_size)
    if size is not None and not path.is_dir():
        fail("--image-size: only for a folder of images (an .npz is sent as it is)", 2)
    with _api(url, api_key) as client:
        got = _upload(client, path, name, size)
    console.print(f"Train on it: freshnets submit --dataset {got['id']}", highlight=False)


def uploads(url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """List the data sets you uploaded (the built-in ones: `freshnets datasets list`)."""
    with _api(url, api_key) as client:
        rows = [d for d in _items(client.get("/v1/datasets")) if not d["builtin"]]
    columns = [
        Column("id", id=True),
        Column("name"),
        Column("shape", drop=3),
        Column("classes", right=True, drop=4),
        Column("train", right=True, drop=2),
        Column("test", right=True, drop=1),
        Column("size", right=True),
        Column("uploaded", drop=5),
    ]
    table = [
        (
            d["id"],
            escape(d["name"]),
            "x".join(map(str, d.get("input_shape") or ())),
            str(d.get("num_classes", "")),
            f"{d.get('train_size') or 0:,}",
            f"{d.get('test_size') or 0:,}",
            fmt_bytes(d.get("size_bytes")),
            str(d.get("created_at", ""))[5:16].replace("T", " "),
        )
        for d in rows
    ]
    print_listing(f"Uploads ({len(rows)})", columns, table)


delete_app = typer.Typer(
    no_args_is_help=True, help="Delete your models, jobs or uploads for good (asks first)."
)
YesOpt = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask first (needed without a terminal).")
]


def _delete(
    client: Api,
    kind: Literal["model", "job", "upload"],
    route: str,
    given: list[str],
    resolve: Callable[[str], str],
    describe: Callable[[dict[str, Any]], str],
    yes: bool,
) -> None:
    """Resolve each id once, show what goes, ask once, then delete in order; a refusal (409:
    still in use) stops there, after naming what was deleted before it."""
    ids = list(dict.fromkeys(resolve(g) for g in given))
    shown = [describe(client.get(f"{route}/{item_id}")) for item_id in ids]
    for line in shown:
        console.print(f"  {line}", highlight=False)
    what = f"{len(ids)} {kind}{'s' if len(ids) > 1 else ''}"
    if not yes:
        if not sys.stdin.isatty():
            fail(f"not asking without a terminal: pass --yes to delete {what}", 2)
        typer.confirm(f"Delete {what} for good?", abort=True)
    for item_id in ids:
        client.delete(f"{route}/{item_id}")
        console.print(f"Deleted {kind} [bold]{item_id}[/]", highlight=False)


@delete_app.command("model")
def delete_model(
    models: Annotated[
        list[str], typer.Argument(help="Model ids (`freshnets models`), or unique starts.")
    ],
    yes: YesOpt = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Delete models and their files (DELETE /v1/models/ID).

    A model that a queued or running job learns from stays until that job ends."""

    def describe(m: dict[str, Any]) -> str:
        return (
            f"{m['id']}  {escape(m.get('name') or '')}  {_dataset_label(m)} {m['method']} "
            f"{fmt_compression(m.get('compression_achieved'))}, "
            f"test acc {fmt_pct(m.get('test_accuracy'))}, {fmt_bytes(m.get('compact_bytes'))}"
        )

    with _api(url, api_key) as client:
        resolve = partial(_whole_id, client, "models")
        _delete(client, "model", "/v1/models", models, resolve, describe, yes)


@delete_app.command("job")
def delete_job(
    jobs: Annotated[
        list[str], typer.Argument(help="Job ids (`freshnets jobs`), or unique starts.")
    ],
    yes: YesOpt = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Delete finished jobs and their per-epoch metrics (DELETE /v1/jobs/ID).

    Their models stay; a queued or running job must be cancelled first (`freshnets cancel`)."""

    def describe(j: dict[str, Any]) -> str:
        model = f", its model {j['model_id']} stays" if j.get("model_id") else ""
        return (
            f"{j['id']}  {escape(j.get('name') or '')}  {_dataset_label(j)} {j['method']} "
            f"{_job_factor(j)}, {j['state']}{model}"
        )

    with _api(url, api_key) as client:
        _delete(client, "job", "/v1/jobs", jobs, partial(_whole_id, client, "jobs"), describe, yes)


@delete_app.command("upload")
def delete_upload(
    datasets: Annotated[
        list[str], typer.Argument(help="Upload ids (`freshnets uploads`), or unique starts.")
    ],
    yes: YesOpt = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Delete uploaded data sets (DELETE /v1/datasets/ID).

    Not while a queued or running job trains on it; the models trained on it stay."""

    def describe(d: dict[str, Any]) -> str:
        if d["builtin"]:  # before anything is asked or deleted
            fail(f"{d['id']}: built in, not your upload; nothing deleted", 2)
        return (
            f"{d['id']}  {escape(d['name'])}  {d.get('num_classes')} classes, "
            f"{fmt_bytes(d.get('size_bytes'))}"
        )

    with _api(url, api_key) as client:
        resolve = partial(_upload_id, client)
        _delete(client, "upload", "/v1/datasets", datasets, resolve, describe, yes)


def usage(url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """What you hold against the server's quotas: jobs queued or running, bytes stored."""
    with _api(url, api_key) as client:
        got = client.get("/v1/usage")

    def of(used: str, limit: int, shown: str) -> str:
        return f"{used} of {shown}" if limit else f"{used} (no limit)"

    jobs_limit, bytes_limit = got["max_active_jobs"], got["max_owner_bytes"]
    console.print(
        f"[bold]{got['owner']}[/]\n"
        f"  jobs queued or running  {of(str(got['active_jobs']), jobs_limit, str(jobs_limit))}\n"
        f"  stored                  "
        f"{of(fmt_bytes(got['stored_bytes']), bytes_limit, fmt_bytes(bytes_limit))} "
        f"(uploads {fmt_bytes(got['uploads_bytes'])}, models {fmt_bytes(got['models_bytes'])})\n"
        f"  largest upload          {fmt_bytes(got['max_upload_bytes'])}",
        highlight=False,
    )


DOWNLOADS = {  # --format: the route under /v1/models/{id}, and a file name's suffix
    "compact": ("/file", "safetensors"),
    "onnx": ("/export?format=onnx", "onnx"),
    "torchscript": ("/export?format=torchscript", "pt"),
    "dense-safetensors": ("/export?format=dense-safetensors", "dense.safetensors"),
}


def download(
    model: Annotated[str, typer.Argument(help="The model id (`freshnets models`), or a start.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="compact: the FreshNets file (safetensors + JSON, what `freshcore.from_bytes` "
            "reads); onnx, torchscript, dense-safetensors: the rebuilt dense network.",
        ),
    ] = "compact",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write it (default: freshnets-ID.SUFFIX)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Download a trained model: its compact file, or an export of the dense network."""
    if fmt not in DOWNLOADS:
        fail(f"--format: unknown format {fmt!r} (one of {', '.join(DOWNLOADS)})", 2)
    route, suffix = DOWNLOADS[fmt]
    with _api(url, api_key) as client:
        model = _whole_id(client, "models", model)
        path = output or Path(f"freshnets-{model}.{suffix}")
        if path.exists() and not force:
            fail(f"{path} exists: pass --force to overwrite it, or -o another path", 2)
        data = client.request("GET", f"/v1/models/{model}{route}").content
    try:
        path.write_bytes(data)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}", 2)
    console.print(f"Wrote {path} ({fmt_bytes(len(data))}, {fmt})", highlight=False)


def _top_k(pred: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """The API's top-k list, or the best k of a full `probabilities` list."""
    top = pred.get("top_k") or pred.get("top")
    if top is None:
        probs = pred.get("probabilities") or []
        names = pred.get("class_names") or []
        order = sorted(range(len(probs)), key=lambda i: -probs[i])[:k]
        top = [
            {
                "label": i,
                "class_name": names[i] if i < len(names) else None,
                "probability": probs[i],
            }
            for i in order
        ]
    return top[:k]


def _top_cell(t: dict[str, Any]) -> str:
    name = t.get("class_name") if t.get("class_name") is not None else t.get("label")
    return f"{name} ({fmt_pct(t.get('probability'), 1)})"


def register(cli: typer.Typer) -> None:
    """Add this module's commands to the `freshnets` entry point."""
    cli.command()(train)
    cli.command()(submit)
    cli.command()(jobs)
    cli.command()(models)
    cli.command()(predict)
    cli.command()(cancel)
    cli.command()(download)
    cli.command()(usage)
    cli.command()(rename)
    cli.command()(upload)
    cli.command()(uploads)
    cli.add_typer(delete_app, name="delete")
