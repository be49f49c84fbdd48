"""`freshnets train` (local), and the REST client commands against a live stack, as a user runs
them: real processes, real exit codes, and clean messages instead of tracebacks."""

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from app.cli import cli as cli_app
from app.cli.client import fmt_bytes
from app.cli.stack import free_port

REPO = Path(__file__).resolve().parents[2]
MNIST_500 = REPO / "tests" / "data" / "fixtures" / "mnist-500.npz"


def clean_failure(result, code: int, *needles: str) -> None:
    """A failure with exit `code`, its message on stderr, and no traceback anywhere."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.mark.slow
def test_train_writes_a_loadable_compact_file(cli, tmp_path: Path) -> None:
    import freshcore
    from freshcore import data as fdata

    out = tmp_path / "digits-model"
    env = {"FRESHNETS_DATA_DIR": str(tmp_path / "data"), "FRESHNETS_TORCH_THREADS": "1"}
    result = cli(
        "train", "--dataset", "digits", "--method", "freshnets", "--compression", "1/8",
        "--epochs", "2", "--device", "cpu", "--output", str(out), "--width", "0.5", "--balanced",
        "--allocation", '{"shape": "exponential", "decay": 1}', env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Size report" in result.stdout and "total" in result.stdout
    assert "Test accuracy" in result.stdout
    path = out.with_name(out.name + ".safetensors")
    assert path.is_file() and str(path.name) in result.stdout.replace("\n", "")

    model = freshcore.load(path)
    assert model.method == "freshnets"
    assert model.compression == pytest.approx(1 / 8)
    # The model options reach the file: a half-width network, balanced convs, that allocation.
    convs = [p for p in model.plan if p and p["kind"] == "fresh-conv"]
    assert convs and all(p["balanced"] and p["width"] for p in convs)
    assert model.allocation == {"shape": "exponential", "decay": 1.0}
    report = freshcore.size_report(model).to_dict()
    total = report.get("total", report)
    assert total["compact_bytes"] < total["dense_bytes"]
    ds = fdata.load("digits", cache_dir=tmp_path / "data" / "cache")
    model.eval()
    with torch.no_grad():
        logits = model(ds.x_test[:64])
    assert logits.shape == (64, ds.info.num_classes)
    assert torch.isfinite(logits).all()


def test_train_bad_arguments_are_named() -> None:
    # In-process (typer's CliRunner): these fail before any training, so a subprocess per case
    # would only pay for importing torch again.
    runner = CliRunner()
    cases = [
        (["--compression", "0"], "--compression"),
        (["--compression", "1/0"], "--compression"),
        (["--method", "nope"], "nope"),
        (["--dataset", "no-such-set"], "no-such-set"),
        (["--method", "lowfreq", "--balanced"], "balanced applies to"),
        (["--width", "2"], "width must be"),
        (["--allocation", "{oops"], "--allocation"),
        (["--budget-policy", "magic"], "'magic'"),
    ]
    for extra, needle in cases:
        result = runner.invoke(cli_app, ["train", "--dataset", "digits", *extra])
        assert result.exit_code == 2, (extra, result.stdout, result.stderr)
        assert needle in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert isinstance(result.exception, SystemExit), result.exception  # not a crash


def test_train_on_your_own_npz_or_folder(cli, tmp_path: Path) -> None:
    """`train --dataset` takes a local .npz or a folder of images; the file is named after it,
    and a file that is not a data set, or none, is a usage error."""
    import freshcore

    env = {"FRESHNETS_DATA_DIR": str(tmp_path / "data"), "FRESHNETS_TORCH_THREADS": "1"}
    args = ["--epochs", "1", "--device", "cpu", "--compression", "1/8", "--batch-size", "64"]
    result = cli("train", "--dataset", str(MNIST_500), *args, "-o", str(tmp_path / "m"), env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"on {MNIST_500} (1, 28, 28)" in result.stdout.replace("\n", " ")
    assert freshcore.load(tmp_path / "m.safetensors").class_names == [str(i) for i in range(10)]

    folder = tmp_path / "greys"

    def write_greys(count: int) -> None:
        for label, value in (("dark", 30), ("light", 200)):
            (folder / label).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = np.full((12, 12), value + i, dtype=np.uint8)
                Image.fromarray(image).save(folder / label / f"{i}.png")

    write_greys(6)  # too few: the validation split would be empty
    clean_failure(cli("train", "--dataset", str(folder), env=env), 2, "validation split empty")
    write_greys(14)
    result = subprocess.run(  # the default output file lands in the working directory
        [sys.executable, "-c", "from app.cli import main; main()", "train", "--dataset",
         str(folder), *args, "--preset", "mnist-cnn"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **env},
        capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    written = tmp_path / "greys-mnist-cnn-freshnets-1o8.safetensors"
    assert freshcore.load(written).class_names == ["dark", "light"]

    clean_failure(cli("train", "--dataset", "./none.npz", env=env), 2, "no such file or folder")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip archive")
    clean_failure(cli("train", "--dataset", str(junk), env=env), 2, "junk.npz", "file:")


def test_piped_tables_keep_every_value_whole(cli, tmp_path: Path) -> None:
    # Piped into a file or a program there is no window to fit: nothing is cut or wrapped. A
    # set COLUMNS is still a width (an 80-column window wraps the longest title).
    env = {"FRESHNETS_DATA_DIR": str(tmp_path)}
    piped = cli("datasets", "list", env=env, columns=None)
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    assert any(
        "mnist-bg-img-rot" in line and "MNIST-BG-IMG-ROT (regenerated)" in line for line in lines
    )
    assert "…" not in piped.stdout
    narrow = cli("datasets", "list", env=env, columns=80)
    assert narrow.returncode == 0, narrow.stderr
    assert "MNIST-BG-IMG-ROT (regenerated)" not in narrow.stdout
    assert max(map(len, narrow.stdout.splitlines())) <= 80


def test_unreachable_server(cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for command in (["jobs"], ["models"], ["submit", "--dataset", "digits", "--preset", "x"]):
        clean_failure(cli(*command, "--url", url, "--api-key", "fn_x"), 1, "cannot reach", url)


def test_default_url_is_where_up_serves(cli) -> None:
    # Without --url the client goes where `freshnets up` listens with the same settings: a
    # changed FRESHNETS_PORT moves both, and a wildcard host is reached on loopback.
    port = free_port()  # nothing listens there
    for host in ("127.0.0.1", "0.0.0.0"):
        env = {"FRESHNETS_PORT": str(port), "FRESHNETS_HOST": host}
        result = cli("jobs", "--api-key", "fn_x", env=env)
        clean_failure(result, 1, "cannot reach", f"http://127.0.0.1:{port}")


def test_missing_key_file(cli, tmp_path: Path) -> None:
    env = {"FRESHNETS_DATA_DIR": str(tmp_path)}
    clean_failure(cli("jobs", env=env), 1, "no API key", str(tmp_path / "api-key"))


def test_wrong_key_is_refused(cli, stack) -> None:
    result = cli("jobs", "--url", stack.url, "--api-key", "fn_wrong")
    clean_failure(result, 1, "refused the API key")


def test_key_from_environment_and_key_file(cli, stack, tmp_path: Path) -> None:
    result = cli("jobs", env={"FRESHNETS_URL": stack.url, "FRESHNETS_API_KEY": stack.key})
    assert result.returncode == 0, result.stderr
    assert "Jobs" in result.stdout
    (tmp_path / "api-key").write_text(stack.key + "\n")
    result = cli("models", env={"FRESHNETS_URL": stack.url, "FRESHNETS_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "Models" in result.stdout


def test_bad_arguments_show_the_api_message(cli, stack) -> None:
    auth = ["--url", stack.url, "--api-key", stack.key]
    result = cli("submit", "--dataset", "digits", "--compression", "2", *auth)
    clean_failure(result, 2, "compression", "(0, 1]")
    result = cli("submit", "--dataset", "digits", "--method", "magic", *auth)
    clean_failure(result, 2, "method", "magic")
    policy = '{"kind": "conv-boost", "conv_factor": 0.5}'
    result = cli("submit", "--dataset", "digits", "--budget-policy", policy, *auth)
    clean_failure(result, 2, "model_options.budget_policy", "conv_factor")
    result = cli("submit", "--dataset", "digits", "--allocation", '{"shape": "exp', *auth)
    clean_failure(result, 2, "--allocation", "not valid JSON")
    result = cli("submit", "--dataset", "digits", "--allocation", "5", *auth)
    clean_failure(result, 2, "--allocation", "a name or a JSON object")
    result = cli("predict", "0" * 32, __file__, *auth)
    clean_failure(result, 2, "no model")
    clean_failure(cli("predict", "0" * 32, "/no/such.png", *auth), 2, "/no/such.png")


def test_submit_sends_the_model_options(cli, stack) -> None:
    """--allocation and --budget-policy (a name or JSON) reach the job as freshcore parses them."""
    auth = ["--url", stack.url, "--api-key", stack.key]
    result = cli(
        "submit", "--dataset", "digits", "--compression", "1/8", "--epochs", "1", "--no-follow",
        "--budget-policy", "conv-boost", "--allocation", '{"shape": "beta", "a": 1, "b": 4}',
        *auth,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    job_id = re.search(r"Queued job (\w+)", result.stdout).group(1)
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers) as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["model_options"] == {
            "allocation": {"shape": "beta", "a": 1.0, "b": 4.0},
            "budget_policy": {"kind": "conv-boost", "conv_factor": 4.0},
        }
        client.post(f"/v1/jobs/{job_id}/cancel")  # the worker's time is for the other tests


def test_submit_like_a_job(cli, stack) -> None:
    """`submit --like JOB` sends all the job was given, changed by the options given; what the
    new method cannot take is left out and named, unless given on the command line."""
    auth = ["--url", stack.url, "--api-key", stack.key]
    headers = {"Authorization": f"Bearer {stack.key}"}
    client = httpx.Client(base_url=stack.url, headers=headers)
    cut_off = '{"shape": "exponential", "decay": 2, "min_rate": 0.25}'
    ids = []

    def queued(*args: str) -> dict:
        result = cli("submit", *args, "--no-follow", *auth)
        assert result.returncode == 0, result.stderr + result.stdout
        ids.append(re.search(r"Queued job (\w+)", result.stdout).group(1))
        client.post(f"/v1/jobs/{ids[-1]}/cancel")  # the worker's time is for the other tests
        return client.get(f"/v1/jobs/{ids[-1]}").json() | {"stdout": result.stdout}

    first = queued(
        "--dataset", str(MNIST_500), "--preset", "mnist-allconv", "--compression", "1/8",
        "--epochs", "2", "--lr", "0.03", "--seed", "3", "--width", "0.5", "--balanced",
        "--allocation", cut_off, "--budget-policy", "conv-boost", "--name", "first",
    )  # fmt: skip
    assert first["model_options"]["allocation"]["min_rate"] == 0.25

    # Another method: the rest is the job's; its allocation, width and balanced buckets,
    # which dense does not take, are left out and named.
    dense = queued("--like", first["id"][:6], "--method", "dense")
    said = f"Like job {first['id']}\nQueued job {dense['id']}; left out, as dense takes none: "
    assert said in dense["stdout"], dense["stdout"]
    assert "allocation {" in dense["stdout"] and "width 0.5, balanced true" in dense["stdout"]
    assert dense["method"] == "dense" and dense["dataset"] == first["dataset"]
    assert dense["architecture_name"] == "mnist-allconv"
    assert dense["compression"] == first["compression"] == 0.125
    assert dense["training"] == first["training"] and dense["training"]["lr"] == 0.03
    assert (dense["seed"], dense["name"]) == (3, "first")
    conv_boost = {"kind": "conv-boost", "conv_factor": 4.0}
    assert dense["model_options"] == {"allocation": None, "budget_policy": conv_boost}

    # The same method: each option given replaces the job's, the others stay.
    second = queued(
        "--like", first["id"], "--compression", "1/16", "--width", "0.25", "--seed", "4",
        "--epochs", "1", "--name", "second",
    )  # fmt: skip
    assert "left out" not in second["stdout"]
    assert (second["method"], second["compression"], second["seed"]) == ("freshnets", 0.0625, 4)
    assert second["model_options"] == first["model_options"] | {"width": 0.25}
    assert second["training"] == first["training"] | {"epochs": 1}
    assert second["name"] == "second"

    # A freshnets-uniform job's allocation is the method's own, not a choice to copy.
    uniform = queued("--like", first["id"], "--method", "freshnets-uniform", "--name", "u")
    assert uniform["model_options"]["allocation"] == {"shape": "uniform"}
    back = queued("--like", uniform["id"], "--method", "freshnets")
    assert back["model_options"]["allocation"] == {"shape": "exponential", "decay": 0.5}
    assert back["model_options"]["width"] == 0.5 and back["name"] == "u"

    # Another data set: the job's network stays where it takes the images (a new job would get
    # mnist-cnn), and gives way to the preset for their shape where it does not (8x8 digits).
    same_shape = queued("--like", first["id"], "--dataset", first["dataset"][:8])
    assert same_shape["architecture_name"] == "mnist-allconv"
    digits = queued("--like", first["id"], "--dataset", "digits")
    assert (digits["dataset"], digits["architecture_name"]) == ("digits", "mnist-cnn")
    assert digits["model_options"] == first["model_options"]

    # An option given is sent as given, for the API to refuse; no --dataset and no --like, or
    # a job of nobody's, are usage errors.
    refused = cli("submit", "--like", first["id"], "--method", "dense", "--width", "0.5", *auth)
    clean_failure(refused, 2, "model_options.width", "dense")
    clean_failure(cli("submit", *auth), 2, "give --dataset (or --like JOB_ID")
    clean_failure(cli("submit", "--like", "ffffff", *auth), 2, "none of your jobs")

    # The upload goes once its jobs have stopped, and a model a job made before its cancel
    # (digits train in a blink) too: the listings of later tests hold none of these.
    deadline = time.monotonic() + 60
    while any(client.get(f"/v1/jobs/{i}").json()["state"] == "running" for i in ids):
        assert time.monotonic() < deadline, "a cancelled job still runs"
        time.sleep(0.2)
    assert client.delete(f"/v1/datasets/{first['dataset']}").status_code == 204
    for job_id in ids:
        if model_id := client.get(f"/v1/jobs/{job_id}").json()["model_id"]:
            assert client.delete(f"/v1/models/{model_id}").status_code == 204
    client.close()


@pytest.mark.slow
def test_submit_a_grid_of_methods_factors_and_seeds(cli, stack, api_with_settings) -> None:
    """Comma-separated --method, --compression and --seed queue a job each (one dense a seed:
    it stores every weight), leave out per method the options it does not take, follow them
    all with a bar each, and end with a table of their results."""
    auth = ["--url", stack.url, "--api-key", stack.key]
    grid = ["--method", "freshnets,lowfreq,dense", "--compression", "1/8,1/16", "--seed", "0,1"]
    result = cli(
        "submit", "--dataset", "digits", *grid, "--epochs", "1", "--balanced", "--poll", "0.2",
        "--name", "grid", *auth, columns=160,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    ids = re.findall(r"Queued job (\w+) \((.+?)\)(;.*)?$", result.stdout, re.MULTILINE)
    factors = {"freshnets": ["1/8", "1/16"], "lowfreq": ["1/8", "1/16"], "dense": ["1 (dense)"]}
    expected = [f"{m} {c} · seed {s}" for m, cs in factors.items() for c in cs for s in (0, 1)]
    assert [label for _, label, _ in ids] == expected
    assert all(("balanced" in note) == ("freshnets" not in label) for _, label, note in ids)
    assert "left out, as lowfreq takes none: balanced true" in result.stdout
    table = result.stdout.split("Jobs (10)")[1]
    assert table.count("succeeded") == 10 and table.count("%") == 10, table
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers) as client:
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id, _, _ in ids]
    assert {j["name"] for j in jobs} == {"grid"} and {j["state"] for j in jobs} == {"succeeded"}
    assert [(j["model_options"] or {}).get("balanced") for j in jobs] == [True] * 4 + [None] * 6
    assert {j["seed"] for j in jobs} == {0, 1}
    with httpx.Client(base_url=stack.url, headers=headers) as client:  # for the later listings
        for job in jobs:
            assert client.delete(f"/v1/models/{job['model_id']}").status_code == 204

    # A grid the owner's room for active jobs cannot take whole is refused before any goes.
    with api_with_settings(FRESHNETS_MAX_ACTIVE_JOBS="2") as limited_url:
        limited = ["--url", limited_url, "--api-key", stack.key]
        refused = cli("submit", "--dataset", "digits", *grid[:2], "--no-follow", *limited)
        clean_failure(refused, 2, "3 jobs, but you have 0 queued or running of the 2")
        assert "Queued" not in refused.stdout
    clean_failure(cli("submit", "--dataset", "digits", "--seed", "0,one", *auth), 2, "--seed")
    clean_failure(cli("submit", "--dataset", "digits", "--method", "lowfreq,", *auth), 2, "empty")


@pytest.mark.slow
def test_submit_follows_the_job_then_lists_and_predicts(cli, stack, tmp_path: Path) -> None:
    auth = ["--url", stack.url, "--api-key", stack.key]
    result = cli(
        "submit", "--dataset", "digits", "--method", "freshnets", "--compression", "1/8",
        "--epochs", "3", "--poll", "0.3", "--name", "[b]digits[/b], 3 epochs", *auth,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Queued job" in result.stdout and "succeeded" in result.stdout
    job_id = re.search(r"Queued job (\w+)", result.stdout).group(1)
    model_id = re.search(r"succeeded model (\w+)", result.stdout).group(1)

    jobs = cli("jobs", "--state", "succeeded", *auth)
    assert jobs.returncode == 0 and job_id in jobs.stdout and "succeeded" in jobs.stdout
    models = cli("models", *auth)
    assert models.returncode == 0 and model_id in models.stdout and "freshnets" in models.stdout
    assert "1/8" in models.stdout and "%" in models.stdout
    # The job's label, on the job and its model, printed as typed (not as rich markup).
    assert "[b]digits[/b], 3 epochs" in models.stdout and "[b]digits[/b]" in jobs.stdout

    images = []
    for i, value in enumerate((0, 255)):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(np.full((28, 28), value, dtype=np.uint8)).save(path)
        images.append(str(path))
    pred = cli("predict", model_id, *images, "--top-k", "2", *auth)
    assert pred.returncode == 0, pred.stderr
    assert "digit0.png" in pred.stdout and "digit1.png" in pred.stdout
    assert pred.stdout.count("%") == 4  # two images, two classes each

    # An 80-column window: whole values, short ids, the least needed columns left out.
    narrow = cli("models", *auth, columns=80)
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in narrow.stdout
    row = next(line for line in lines if model_id[:12] in line)
    assert model_id not in row and "freshnets" in row and "%" in row and "KiB" in row
    assert "ids: their first 12 characters" in narrow.stdout
    jobs = cli("jobs", *auth, columns=80)
    assert max(map(len, jobs.stdout.splitlines())) <= 80 and job_id[:12] in jobs.stdout
    assert cli("models", "--dataset", "digits", *auth).stdout.count(model_id) == 1
    assert model_id not in cli("models", "--dataset", "mnist", *auth).stdout

    # Downloads: the compact file freshcore reads, an ONNX export; nothing overwritten unasked.
    import freshcore

    compact = tmp_path / "model.safetensors"
    got = cli("download", model_id[:12], "-o", str(compact), *auth)
    assert got.returncode == 0 and "Wrote" in got.stdout, got.stderr
    assert freshcore.from_bytes(compact.read_bytes()).method == "freshnets"
    clean_failure(cli("download", model_id, "-o", str(compact), *auth), 2, "--force")
    assert cli("download", model_id, "-o", str(compact), "--force", *auth).returncode == 0
    exported = tmp_path / "model.onnx"
    got = cli("download", model_id, "--format", "onnx", "-o", str(exported), *auth)
    assert got.returncode == 0, got.stderr
    assert onnx.load(str(exported)).graph.input[0].name
    clean_failure(cli("download", model_id, "--format", "pickle", *auth), 2, "--format")

    # Cancel, by a short id: queued, or running and stopped at its next batch.
    queued = cli("submit", "--dataset", "digits", "--epochs", "50", "--no-follow", *auth)
    assert queued.returncode == 0, queued.stderr
    doomed = re.search(r"Queued job (\w+)", queued.stdout).group(1)
    stopped = cli("cancel", doomed[:12], *auth)
    assert stopped.returncode == 0 and doomed in stopped.stdout, stopped.stderr
    deadline = time.monotonic() + 120
    while doomed not in cli("jobs", "--state", "cancelled", *auth).stdout:
        assert time.monotonic() < deadline, "the job was not cancelled within 2 min"
        time.sleep(1)
    clean_failure(cli("cancel", doomed, *auth), 2, "already cancelled")
    # A finished job can be deleted (its curves with it); the model of another stays.
    gone = cli("delete", "job", doomed[:12], "--yes", *auth)
    assert gone.returncode == 0 and f"Deleted job {doomed}" in gone.stdout, gone.stderr
    assert doomed not in cli("jobs", *auth).stdout

    # `rename`: a new label by a short id, then none; a listing without labels has no column.
    renamed = cli("rename", model_id[:12], "the keeper", *auth)
    assert renamed.returncode == 0 and "the keeper" in renamed.stdout, renamed.stderr
    assert model_id in cli("models", "--name", "KEEPER", *auth).stdout
    assert model_id not in cli("models", "--name", "sleeper", *auth).stdout
    assert job_id in cli("jobs", "--name", "3 epochs", *auth).stdout
    cleared = cli("rename", model_id, "", *auth)
    assert cleared.returncode == 0 and "no label" in cleared.stdout, cleared.stderr
    listed = cli("models", "--dataset", "digits", *auth).stdout
    header = next(line for line in listed.splitlines() if line.strip().startswith("id "))
    assert "the keeper" not in listed and " name " not in header and " method " in header

    # `usage`: the owner's jobs and bytes against the server's quotas, as the API counts them.
    shown = cli("usage", *auth)
    assert shown.returncode == 0, shown.stderr
    counted = httpx.get(
        f"{stack.url}/v1/usage", headers={"Authorization": f"Bearer {stack.key}"}
    ).json()
    assert counted["models_bytes"] > 0 and counted["max_active_jobs"] == 16
    assert f"jobs queued or running  {counted['active_jobs']} of 16" in shown.stdout
    assert f"models {fmt_bytes(counted['models_bytes'])})" in shown.stdout
    assert f"of {fmt_bytes(10 * 1024**3)}" in shown.stdout
    assert f"largest upload          {fmt_bytes(200 * 1024**2)}" in shown.stdout

    # `predict` takes a unique start of the id, and names the models an ambiguous one starts.
    short = cli("predict", model_id[:12], images[0], *auth)
    assert short.returncode == 0 and model_id in short.stdout, short.stderr
    twin = model_id[:12] + ("1" if model_id[12] == "0" else "0") + model_id[13:]
    _copy_model(stack.data_dir, model_id, twin)
    clean_failure(cli("predict", model_id[:12], images[0], *auth), 2, model_id, twin)
    assert cli("predict", model_id[:13], images[0], *auth).returncode == 0
    clean_failure(cli("predict", "beef", images[0], *auth), 2, "none of your models")

    # `delete model`: both, by a whole id and a unique start, without asking (--yes); an id
    # given twice is deleted once.
    clean_failure(cli("delete", "model", twin, *auth), 2, "pass --yes")
    gone = cli("delete", "model", twin, model_id[:13], twin, "--yes", *auth)  # each once
    assert gone.returncode == 0 and gone.stdout.count("Deleted model") == 2, gone.stderr
    assert f"Deleted model {twin}" in gone.stdout and f"Deleted model {model_id}" in gone.stdout
    assert model_id not in cli("models", *auth).stdout
    clean_failure(cli("predict", model_id, images[0], *auth), 2, "no model")


def _copy_model(data_dir: Path, model_id: str, new_id: str) -> None:
    """A second row of the stack's model (and its file) under `new_id`, written directly."""
    from sqlalchemy.orm import Session

    from app.db.engine import make_engine
    from app.db.models import Model, ModelBlob
    from app.settings import Settings

    engine = make_engine(Settings(data_dir=data_dir).effective_database_url)
    with Session(engine) as session:
        model, blob = session.get(Model, model_id), session.get(ModelBlob, model_id)
        columns = {c.key: getattr(model, c.key) for c in Model.__table__.columns}
        session.add(Model(**{**columns, "id": new_id, "job_id": None}))
        session.flush()
        session.add(ModelBlob(model_id=new_id, data=blob.data))
        session.commit()
    engine.dispose()


def _answer_on_a_terminal(args: list[str], answer: str, env: dict[str, str]) -> tuple[int, str]:
    """`freshnets ARGS` with a terminal as its stdin, `answer` typed into it; its exit code and
    stdout (the prompt goes to the terminal's other end, which we read to drain it)."""
    controller, terminal = pty.openpty()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHNETS_")}
    full_env.update(TERM="dumb", COLUMNS="200", PYTHONPATH=str(REPO), **env)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from app.cli import main; main()", *args],
        stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, env=full_env,
        text=True,
    )  # fmt: skip
    os.close(terminal)
    os.write(controller, answer.encode())
    out, _ = proc.communicate(timeout=120)
    os.close(controller)
    return proc.returncode, out


def test_upload_train_on_it_and_delete(cli, stack, api_with_settings, tmp_path: Path) -> None:
    """`upload` and `submit --dataset FILE` put a real .npz on the server, `uploads` lists it,
    short ids name it, and `delete upload` asks first, refuses while a job uses it, then goes."""
    auth = ["--url", stack.url, "--api-key", stack.key]
    headers = {"Authorization": f"Bearer {stack.key}"}
    api = httpx.Client(base_url=stack.url, headers=headers)

    sent = cli("upload", str(MNIST_500), "--name", "[i]five hundred[/i]", *auth)
    assert sent.returncode == 0, sent.stderr
    first = re.search(r"Uploaded \[i\]five hundred\[/i\] as (\w+): 10 classes", sent.stdout)
    assert first, sent.stdout
    first = first.group(1)
    assert f"freshnets submit --dataset {first}" in sent.stdout
    stored = api.get(f"/v1/datasets/{first}").json()
    assert stored["size_bytes"] == MNIST_500.stat().st_size and stored["input_shape"] == [1, 28, 28]

    # `submit` uploads a local file first and trains on it; the worker is kept busy by it.
    busy = cli("submit", "--dataset", str(MNIST_500), "--epochs", "200", "--no-follow", *auth)
    assert busy.returncode == 0, busy.stderr
    second = re.search(r"Uploaded mnist-500 as (\w+)", busy.stdout).group(1)
    busy_job = re.search(r"Queued job (\w+)", busy.stdout).group(1)
    assert api.get(f"/v1/jobs/{busy_job}").json()["dataset"] == second
    # ... and takes an upload's unique start for its id.
    queued = cli("submit", "--dataset", first[:12], "--epochs", "1", "--no-follow", *auth)
    assert queued.returncode == 0, queued.stderr
    queued_job = re.search(r"Queued job (\w+)", queued.stdout).group(1)
    assert api.get(f"/v1/jobs/{queued_job}").json()["dataset"] == first

    listed = cli("uploads", *auth)
    assert listed.returncode == 0, listed.stderr
    assert first in listed.stdout and second in listed.stdout and "mnist-500" in listed.stdout
    assert "[i]five hundred[/i]" in listed.stdout and "1x28x28" in listed.stdout
    assert "digits" not in listed.stdout  # built-in data sets are not uploads
    # Jobs name an upload by its name and the start of its id, as typed.
    assert f"[i]five hundred[/i] · {first[:8]}" in cli("jobs", *auth).stdout

    # Asking: no terminal, no deleting; "n" on a terminal keeps it; a job in use keeps it.
    clean_failure(cli("delete", "upload", first, *auth), 2, "pass --yes")
    code, out = _answer_on_a_terminal(["delete", "upload", first[:12], *auth], "n\n", {})
    assert code == 1 and "for good?" in out and "Aborted" in out, out
    assert api.get(f"/v1/datasets/{first}").status_code == 200
    clean_failure(cli("delete", "upload", second, "--yes", *auth), 2, busy_job, "cancel it first")
    clean_failure(cli("delete", "job", busy_job, "--yes", *auth), 2, "cancel it first")
    clean_failure(cli("delete", "upload", "digits", "--yes", *auth), 2, "built in")
    for job in (queued_job, busy_job):
        api.post(f"/v1/jobs/{job}/cancel")
    deadline = time.monotonic() + 120
    while api.get(f"/v1/jobs/{busy_job}").json()["state"] != "cancelled":
        assert time.monotonic() < deadline, "the job was not cancelled within 2 min"
        time.sleep(0.5)

    code, out = _answer_on_a_terminal(["delete", "upload", first, *auth], "y\n", {})
    assert code == 0 and f"Deleted upload {first}" in out, out
    gone = cli("delete", "upload", second[:12], "-y", *auth)
    assert gone.returncode == 0 and f"Deleted upload {second}" in gone.stdout, gone.stderr
    assert api.get(f"/v1/datasets/{first}").status_code == 404
    assert "Uploads (0)" in cli("uploads", *auth).stdout
    assert f"{first[:8]} (deleted)" in cli("jobs", *auth).stdout  # the jobs stay
    clean_failure(cli("delete", "upload", first, "--yes", *auth), 2, "no data set")

    # Files that are not data sets are named, locally or by the server's check.
    clean_failure(cli("upload", str(tmp_path / "none.npz"), *auth), 2, "cannot read")
    clean_failure(cli("submit", "--dataset", "./none.npz", *auth), 2, "no such file")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip archive")
    clean_failure(cli("upload", str(junk), *auth), 2, "file:", "HTTP 422")
    assert "Uploads (0)" in cli("uploads", *auth).stdout

    # A folder of images, a sub-folder per class, is packed here and sent as an upload .npz;
    # images of another size need --image-size.
    with np.load(MNIST_500, allow_pickle=False) as arrays:
        x, y = arrays["x"], arrays["y"]
    folder = tmp_path / "threes and sevens"
    for label in (3, 7):
        (folder / str(label)).mkdir(parents=True)
        for i in np.flatnonzero(y == label)[:8]:
            Image.fromarray(x[i].reshape(28, 28)).save(folder / str(label) / f"{i}.png")
    Image.fromarray(x[0].reshape(28, 28)).resize((32, 32)).save(folder / "7" / "big.png")
    clean_failure(cli("upload", str(folder), *auth), 2, "big.png", "32x32", "image size")
    clean_failure(cli("upload", str(folder), "--image-size", "big", *auth), 2, "HEIGHTxWIDTH")
    clean_failure(cli("upload", str(MNIST_500), "--image-size", "8x8", *auth), 2, "a folder")
    sent = cli("upload", str(folder), "--image-size", "28x28", *auth)
    assert sent.returncode == 0, sent.stderr
    packed = re.search(r"Uploaded threes and sevens as (\w+): 2 classes, 1x28x28", sent.stdout)
    assert packed, sent.stdout
    stored = api.get(f"/v1/datasets/{packed.group(1)}").json()
    assert stored["class_names"] == ["3", "7"]
    assert stored["train_size"] + stored["test_size"] == 17
    assert cli("delete", "upload", packed.group(1), "--yes", *auth).returncode == 0
    api.close()

    # A file over the server's limits is refused here, before it is sent (a second API process
    # on the same database, with small limits): the upload limit, then the owner's bytes.
    small = tmp_path / "small.npz"
    np.savez_compressed(small, x=x[:100], y=y[:100])
    small_limits = {"FRESHNETS_MAX_UPLOAD_BYTES": "50000", "FRESHNETS_MAX_OWNER_BYTES": "1000"}
    with api_with_settings(**small_limits) as limited_url:
        limited = ["--url", limited_url, "--api-key", stack.key]
        refused = cli("upload", str(MNIST_500), *limited)
        clean_failure(refused, 2, "77.9 KiB (79,758 bytes), over the server's", "(48.8 KiB)")
        clean_failure(cli("upload", str(small), *limited), 2, "FRESHNETS_MAX_OWNER_BYTES", "delete")
        assert "uploading" not in refused.stdout
    assert "Uploads (0)" in cli("uploads", *auth).stdout
