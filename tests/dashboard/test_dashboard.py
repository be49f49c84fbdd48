"""The dashboard in headless Chromium against a real stack: sign in, a bad field named by the API,
launch a small job, watch its progress and curves move, find the model in the table and on the
frontier, download it, draw a digit and get a prediction, cancel a job and delete it, upload a
data set and delete it, delete the model. Screenshots go to tests/_artifacts/."""

import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
EPOCHS = 8
MNIST_500 = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "mnist-500.npz"

# Samples the job page every 40 ms (the dashboard polls every 100 ms here), so every rendered
# progress value and point count is seen.
WATCH_JOB = """() => {
  window.__seen = {progress: [], points: []};
  window.__sample = () => {
    const bar = document.querySelector('#job-progress');
    const chart = document.querySelector('#chart-loss');
    const p = Number(bar.dataset.progress), n = Number(chart.dataset.points || 0);
    const s = window.__seen;
    if (s.progress[s.progress.length - 1] !== p) s.progress.push(p);
    if (s.points[s.points.length - 1] !== n) s.points.push(n);
  };
  window.__watch = setInterval(window.__sample, 40);
}"""
STOP_WATCH = "() => { clearInterval(window.__watch); window.__sample(); return window.__seen; }"


@pytest.fixture(scope="module")
def page(stack, artifacts) -> Iterator["playwright_api.Page"]:
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium chromium-driver)")
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, accept_downloads=True
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            # Whatever the outcome, the last state of the page is kept for a look.
            page.screenshot(path=str(artifacts / "dashboard-last.png"), full_page=True)
        context.close()
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


def open_signed_in(page, url: str, key: str, view: str = "#/jobs") -> None:
    """Open the dashboard at `url` signed in with `key`: a test run alone, or another origin,
    starts signed out."""
    page.goto(f"{url}/?poll_ms=100")
    if page.evaluate("sessionStorage.getItem('freshnets.apiKey')") != key:
        page.fill("#signin-key", key)
        page.click("#signin-form button[type=submit]")
        playwright_api.expect(page.locator("#view-jobs")).to_be_visible()
    page.goto(f"{url}/?poll_ms=100{view}")


def shot(page, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"dashboard-{name}.png"), full_page=True)


def test_dashboard_end_to_end(page, stack, artifacts: Path) -> None:
    expect = playwright_api.expect
    page.goto(f"{stack.url}/?poll_ms=100")

    # Sign in: a wrong key is refused with a message, the right one opens the jobs view.
    expect(page.locator("#view-signin")).to_be_visible()
    page.fill("#signin-key", "fn_not-a-real-key")
    page.click("#signin-form button[type=submit]")
    expect(page.locator('[data-error-for="key"]')).to_contain_text("refused")
    shot(page, artifacts, "01-signin-refused")
    page.fill("#signin-key", stack.key)
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#view-jobs")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('freshnets.apiKey')") == stack.key
    assert page.evaluate("localStorage.length") == 0

    # The launch form shows the API's 422 next to the field it names.
    page.wait_for_selector("#f-dataset option[value=digits]", state="attached")
    page.select_option("#f-dataset", "digits")
    page.select_option("#f-method", "freshnets")
    page.fill("#f-compression", "2")
    page.fill("#f-epochs", str(EPOCHS))
    page.click("#launch-submit")
    compression_error = page.locator('[data-error-for="compression"]')
    expect(compression_error).to_contain_text("(0, 1]")
    expect(page.locator("#f-compression")).to_have_class(re.compile("invalid"))
    shot(page, artifacts, "02-launch-validation")
    # A training setting's error (loc body.training, "TrainConfig.epochs: ...") lands on epochs.
    page.fill("#f-compression", "1/8")
    page.fill("#f-epochs", "0")
    page.click("#launch-submit")
    expect(page.locator('[data-error-for="epochs"]')).to_contain_text("epochs")
    expect(compression_error).to_be_empty()
    page.fill("#f-epochs", str(EPOCHS))

    # Launch a small job, with a label, and watch it on its page.
    page.fill("#f-compression", "1/8")
    page.fill("#f-name", "  first digits  ")
    page.click("#launch-submit")
    page.wait_for_url(re.compile(r"#/job/[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.evaluate(WATCH_JOB)
    page.wait_for_function(
        "Number(document.querySelector('#chart-loss').dataset.points) >= 2", timeout=60_000
    )
    shot(page, artifacts, "03-job-training")
    page.wait_for_function(
        "document.querySelector('#job-progress').dataset.state === 'succeeded'"
        f" && Number(document.querySelector('#chart-acc').dataset.points) === {EPOCHS}",
        timeout=90_000,
    )
    seen = page.evaluate(STOP_WATCH)
    shot(page, artifacts, "04-job-succeeded")
    progress, points = seen["progress"], seen["points"]
    # The bar moved through intermediate values and the curve gained points as it trained.
    assert progress == sorted(progress) and progress[-1] == 1.0, progress
    assert len([p for p in progress if 0 < p < 1]) >= 2, progress
    assert points == sorted(points) and points[-1] == EPOCHS, points
    assert len([n for n in points if 0 < n < EPOCHS]) >= 2, points
    expect(page.locator("#job-cancel")).to_be_hidden()
    assert page.locator("#chart-acc").bounding_box()["height"] > 150

    # The jobs table shows it finished.
    page.click("#nav a[data-view=jobs]")
    row = page.locator(f'#jobs-table tr[data-job-id="{job_id}"]')
    expect(row.locator(".state")).to_have_text("succeeded")
    expect(row.locator("td").nth(1)).to_have_text("first digits")  # trimmed by the API
    expect(row.locator(".progress")).to_have_attribute("data-progress", "1.0000")
    # Under the table, the owner's quotas: nothing queued or running now, the model's bytes.
    expect(page.locator("#usage")).to_contain_text("0 of 16 jobs queued or running")
    expect(page.locator("#usage")).to_contain_text("of 10.00 GiB stored (uploads 0 B, models ")
    shot(page, artifacts, "05-jobs")

    # The model is in the table with its sizes and accuracy; its compact file downloads.
    page.click("#nav a[data-view=models]")
    model_row = page.locator("#models-table tbody tr").first
    expect(model_row).to_contain_text("freshnets")
    expect(model_row).to_contain_text("digits")
    expect(model_row.locator("td").nth(1)).to_have_text("first digits")  # the job's label
    expect(model_row.locator("td").nth(8)).to_contain_text("%")
    page.once("dialog", lambda dialog: dialog.accept("the keeper"))
    model_row.get_by_text("rename").click()
    expect(page.locator("#models-table tbody tr").first.locator("td").nth(1)).to_have_text(
        "the keeper"
    )
    with page.expect_download() as download_info:
        model_row.get_by_text("compact file").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".safetensors")
    assert Path(download.path()).stat().st_size > 100
    shot(page, artifacts, "06-models")

    # The frontier chart plots it.
    page.click("#nav a[data-view=frontier]")
    expect(page.locator("#frontier-dataset")).to_have_value("digits")
    expect(page.locator("#chart-frontier")).to_have_attribute("data-points", "1")
    shot(page, artifacts, "07-frontier")

    # Try it: draw a digit and get the top-k with probabilities.
    page.click("#nav a[data-view=try]")
    page.wait_for_selector("#try-model option", state="attached")
    box = page.locator("#draw").bounding_box()
    x, y = box["x"], box["y"]
    page.mouse.move(x + 100, y + 60)
    page.mouse.down()
    for i in range(1, 21):
        page.mouse.move(x + 100 + 3 * i, y + 60 + 8 * i)  # a slanted stroke: a "1"
    page.mouse.up()
    page.click("#draw-predict")
    expect(page.locator("#topk li").first).to_be_visible()
    probs = [float(t.rstrip("%")) / 100 for t in page.locator("#topk li .p").all_inner_texts()]
    assert 1 <= len(probs) <= 5 and probs == sorted(probs, reverse=True), probs
    assert 0 < sum(probs) <= 1.001
    # The stroke is a "1": the model trained above ranks it first or second.
    assert "1" in page.locator("#topk li .name").all_inner_texts()[:2]
    expect(page.locator("#try-error")).to_be_empty()
    shot(page, artifacts, "08-try-it")

    # An uploaded image goes through the same multipart route.
    page.locator("#topk").evaluate("node => node.replaceChildren()")
    png = io.BytesIO()
    Image.new("L", (28, 28), 0).save(png, format="PNG")
    page.set_input_files(
        "#upload", files=[{"name": "blank.png", "mimeType": "image/png", "buffer": png.getvalue()}]
    )
    expect(page.locator("#topk li")).to_have_count(5)
    expect(page.locator("#try-error")).to_be_empty()

    # Cancel: a long job is stopped from its page. It asks for model options, which its page
    # shows as the API stored them; the allocation is only for freshnets, a width not for the
    # dense networks, balanced buckets only for the methods that hash their convs.
    page.click("#nav a[data-view=jobs]")
    page.select_option("#f-method", "hashednets")
    expect(page.locator("#f-allocation")).to_be_disabled()
    expect(page.locator("#f-balanced")).to_be_enabled()
    page.select_option("#f-method", "lowfreq")
    expect(page.locator("#f-balanced")).to_be_disabled()
    page.select_option("#f-method", "equivalent")
    expect(page.locator("#f-width")).to_be_disabled()
    page.select_option("#f-method", "freshnets")
    expect(page.locator("#f-width")).to_be_enabled()
    page.select_option("#f-budget-policy", label="conv-boost ×4")
    page.select_option("#f-allocation", label="exponential 1, cut off under 0.1")
    page.select_option("#f-width", label="half")
    page.select_option("#f-balanced", label="balanced")
    page.fill("#f-compression", "1/8")
    page.fill("#f-epochs", "200")
    page.click("#launch-submit")
    page.wait_for_url(re.compile(r"#/job/[0-9a-f]+$"))
    expect(page.locator("#job-facts")).to_contain_text(
        "conv-boost ×4 · exponential 1 · cut off under 0.1 · width ×0.5 · balanced buckets"
    )
    cancel = page.locator("#job-cancel")
    expect(cancel).to_be_visible()
    delete_job = page.locator("#job-delete")
    expect(delete_job).to_be_hidden()  # not while it may still train
    cancel.click()
    expect(page.locator("#job-state")).to_have_text("cancelled", timeout=30_000)
    expect(cancel).to_be_hidden()
    shot(page, artifacts, "09-cancelled")

    # A finished job is deleted from its page, asked first ("cancel" keeps it); its row goes.
    cancelled_id = page.url.rsplit("/", 1)[1]
    expect(delete_job).to_be_visible()
    page.once("dialog", lambda dialog: dialog.dismiss())
    delete_job.click()
    expect(page.locator("#job-state")).to_have_text("cancelled")
    assert page.url.endswith(f"#/job/{cancelled_id}")
    page.once("dialog", lambda dialog: dialog.accept())
    delete_job.click()
    page.wait_for_url(re.compile(r"#/jobs$"))
    expect(page.locator(f'#jobs-table tr[data-job-id="{job_id}"]')).to_have_count(1)
    expect(page.locator(f'#jobs-table tr[data-job-id="{cancelled_id}"]')).to_have_count(0)

    # A data set of one's own: a file that is not one is named next to the field; a real one is
    # uploaded, checked and chosen in the form, and counted under the table until it is deleted
    # (asked first: "cancel" keeps it).
    page.click("#nav a[data-view=jobs]")
    junk = {"name": "junk.npz", "mimeType": "application/octet-stream", "buffer": b"not a zip"}
    page.set_input_files("#f-upload", files=[junk])
    expect(page.locator('[data-error-for="dataset"]')).to_contain_text("file:")
    page.set_input_files("#f-upload", str(MNIST_500))
    status = page.locator("#upload-status")
    expect(status).to_contain_text("uploaded mnist-500: 10 classes, 1×28×28, ")
    expect(page.locator('[data-error-for="dataset"]')).to_be_empty()
    upload_id = page.locator("#f-dataset").input_value()
    assert re.fullmatch("[0-9a-f]{32}", upload_id), upload_id
    expect(page.locator("#f-dataset option:checked")).to_have_text(
        f"mnist-500 · upload {upload_id[:8]}"
    )
    expect(page.locator("#f-architecture")).to_have_value("mnist-cnn")
    expect(page.locator("#usage")).not_to_contain_text("uploads 0 B")
    shot(page, artifacts, "10-uploaded")
    # Trained on, it is named by its name and the start of its id.
    page.fill("#f-epochs", "1")
    page.fill("#f-name", "on my upload")
    page.click("#launch-submit")
    page.wait_for_url(re.compile(r"#/job/[0-9a-f]+$"))
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#job-facts")).to_contain_text(f"mnist-500 · {upload_id[:8]}")
    page.click("#nav a[data-view=jobs]")
    expect(page.locator("#f-dataset")).to_have_value(upload_id)
    delete_upload = page.locator("#upload-delete")
    page.once("dialog", lambda dialog: dialog.dismiss())
    delete_upload.click()
    expect(page.locator("#f-dataset")).to_have_value(upload_id)
    page.once("dialog", lambda dialog: dialog.accept())
    delete_upload.click()
    expect(status).to_have_text("deleted mnist-500")
    expect(page.locator(f'#f-dataset option[value="{upload_id}"]')).to_have_count(0)
    expect(delete_upload).to_be_hidden()  # a built-in data set is chosen now
    headers = {"Authorization": f"Bearer {stack.key}"}
    assert httpx.get(f"{stack.url}/v1/datasets/{upload_id}", headers=headers).status_code == 404

    # Its model stays, its data set now shown as deleted. Deleting the model is asked first:
    # "cancel" keeps it, "OK" takes it and its file away.
    page.click("#nav a[data-view=models]")
    rows = page.locator("#models-table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first.locator("td").nth(2)).to_have_text(f"{upload_id[:8]} (deleted)")
    page.once("dialog", lambda dialog: dialog.dismiss())
    rows.first.get_by_role("button", name="delete", exact=True).click()
    expect(rows).to_have_count(2)
    model_id = rows.first.get_attribute("data-model-id")
    page.once("dialog", lambda dialog: dialog.accept())
    rows.first.get_by_role("button", name="delete", exact=True).click()
    expect(rows).to_have_count(1)
    expect(page.locator(f'#models-table tr[data-model-id="{model_id}"]')).to_have_count(0)
    assert httpx.get(f"{stack.url}/v1/models/{model_id}", headers=headers).status_code == 404


def test_launch_a_job_again(page, stack, artifacts: Path) -> None:
    """ "Launch again…" fills the form with all a job was given, options the form does not offer
    among them; the launch sends them with what was changed, and "forget those" drops what the
    form has no field for (the seed, the other training settings)."""
    expect = playwright_api.expect
    client = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.key}"})
    body = {
        "dataset": "digits", "architecture": "mnist-cnn", "method": "freshnets",
        "compression": "1/8", "seed": 5, "name": "from the API",
        "training": {"epochs": 3, "lr": 0.03, "batch_size": 32},
        "model_options": {
            "allocation": {"shape": "exponential", "decay": 1},
            "budget_policy": {"kind": "conv-boost", "conv_factor": 8},
            "width": 0.5, "balanced": True,
        },
    }  # fmt: skip
    source = client.post("/v1/jobs", json=body).json()
    client.post(f"/v1/jobs/{source['id']}/cancel")  # the worker's time is for other tests

    def launched() -> dict:
        page.click("#launch-submit")
        page.wait_for_url(re.compile(r"#/job/[0-9a-f]+$"))
        job_id = page.url.rsplit("/", 1)[1]
        client.post(f"/v1/jobs/{job_id}/cancel")
        return client.get(f"/v1/jobs/{job_id}").json()

    open_signed_in(page, stack.url, stack.key, f"#/job/{source['id']}")
    page.click("#job-again")
    page.wait_for_url(re.compile(r"#/jobs$"))
    expect(page.locator("#launch-like")).to_be_visible()
    expect(page.locator("#launch-like-job")).to_have_text(source["id"][:8])
    expect(page.locator("#launch-like-extras")).to_contain_text("seed (5) and ")
    for field, value in [
        ("dataset", "digits"), ("architecture", "mnist-cnn"), ("method", "freshnets"),
        ("compression", "1/8"), ("epochs", "3"), ("name", "from the API"), ("width", "0.5"),
        ("balanced", "true"),
    ]:  # fmt: skip
        expect(page.locator(f"#f-{field}")).to_have_value(value)
    # Not among the form's options: added, and named after the job.
    from_job = f"(job {source['id'][:8]})"
    expect(page.locator("#f-allocation option:checked")).to_have_text(f"exponential 1 {from_job}")
    expect(page.locator("#f-budget-policy option:checked")).to_have_text(
        f"conv-boost ×8 {from_job}"
    )

    shot(page, artifacts, "11-launch-again")

    # Another method, the rest as the job had it (hashednets has no allocation).
    page.select_option("#f-method", "hashednets")
    again = launched()
    assert (again["method"], again["compression"], again["seed"]) == ("hashednets", 0.125, 5)
    assert again["training"] == source["training"], (again["training"], source["training"])
    assert again["model_options"] == {**source["model_options"], "allocation": None}
    assert again["name"] == "from the API"

    # Kept for the next launch until forgotten; then the seed and training are the defaults.
    page.click("#nav a[data-view=jobs]")
    expect(page.locator("#launch-like")).to_be_visible()
    page.click("#launch-like-forget")
    expect(page.locator("#launch-like")).to_be_hidden()
    page.select_option("#f-method", "freshnets")
    fresh = launched()
    assert fresh["seed"] == 0 and fresh["training"]["lr"] != 0.03
    assert fresh["training"]["batch_size"] != 32 and fresh["training"]["epochs"] == 3
    assert fresh["model_options"] == source["model_options"]

    # A freshnets-uniform job's allocation is the method's own: the form keeps the default.
    options = {"width": 0.5}
    uniform = {**body, "method": "freshnets-uniform", "model_options": options}
    uniform = client.post("/v1/jobs", json=uniform).json()
    client.post(f"/v1/jobs/{uniform['id']}/cancel")
    assert uniform["model_options"]["allocation"] == {"shape": "uniform"}
    page.goto(f"{stack.url}/?poll_ms=100#/job/{uniform['id']}")
    page.click("#job-again")
    expect(page.locator("#launch-like-job")).to_have_text(uniform["id"][:8])
    expect(page.locator("#f-method")).to_have_value("freshnets-uniform")
    expect(page.locator("#f-allocation")).to_have_value("")
    client.close()


def test_an_upload_over_the_limits_is_not_sent(page, stack, api_with_settings) -> None:
    """Against a server whose limits the file breaks (a second API process on the same database),
    the dashboard names the limit next to the field and sends nothing: no POST /v1/datasets."""
    expect = playwright_api.expect
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    error = page.locator('[data-error-for="dataset"]')
    for settings, refusal in [
        (
            {"FRESHNETS_MAX_UPLOAD_BYTES": "50000"},
            "mnist-500.npz: 77.9 KiB, over the server's FRESHNETS_MAX_UPLOAD_BYTES (48.8 KiB); "
            "it was not sent.",
        ),
        ({"FRESHNETS_MAX_OWNER_BYTES": "1000"}, "FRESHNETS_MAX_OWNER_BYTES allows; delete some"),
    ]:
        with api_with_settings(**settings) as url:
            open_signed_in(page, url, stack.key)  # another origin: its own sign-in
            page.wait_for_selector("#f-dataset option[value=digits]", state="attached")
            page.set_input_files("#f-upload", str(MNIST_500))
            expect(error).to_contain_text(refusal)
            expect(page.locator("#upload-status")).to_be_empty()
    assert not [u for u in posts if u.endswith("/v1/datasets")], posts
