"""A teacher from the clients, against a live stack (uvicorn, a Celery worker, Redis): `freshnets
submit --teacher --init --distill-alpha` as a user runs it, and the dashboard's launch form
(teacher, start, distillation weight) and job page, in headless Chromium."""

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "_artifacts"  # screenshots, git-ignored
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]  # fmt: skip


@pytest.fixture(scope="module")
def api(stack: Any) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
        yield client


def wait_final(api: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.3)


@pytest.fixture(scope="module")
def teacher(api: httpx.Client) -> dict[str, Any]:
    """A dense mnist-cnn trained on digits for one epoch: the teacher of this module's jobs."""
    made = api.post(
        "/v1/jobs",
        json={"dataset": "digits", "architecture": "mnist-cnn", "method": "dense",
              "training": {"epochs": 1, "batch_size": 64}},
    )  # fmt: skip
    assert made.status_code == 202, made.text
    job = wait_final(api, made.json()["id"])
    assert job["state"] == "succeeded", job["error"]
    return api.get(f"/v1/models/{job['model_id']}").json()


def test_submit_with_a_teacher(cli, stack: Any, api: httpx.Client, teacher: dict, tmp_path: Path):
    auth = ["--url", stack.url, "--api-key", stack.key]
    # No --preset: the student takes the teacher's network, as a projection needs.
    result = cli(
        "submit", "--dataset", "digits", "--compression", "1/8", "--epochs", "1",
        "--teacher", teacher["id"], "--init", "project", "--distill-alpha", "0", "--poll", "0.3",
        *auth,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    job_id = re.search(r"Queued job (\w+)", result.stdout).group(1)
    model_id = re.search(r"succeeded model (\w+)", result.stdout).group(1)
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert (job["teacher_model_id"], job["init"]) == (teacher["id"], "project")
    assert job["training"]["distill_alpha"] == 0
    assert job["architecture"] == teacher["architecture"] and job["model_id"] == model_id

    image = tmp_path / "digit.png"
    Image.fromarray(np.full((28, 28), 255, dtype=np.uint8)).save(image)
    pred = cli("predict", model_id, str(image), "--top-k", "2", *auth)
    assert pred.returncode == 0 and pred.stdout.count("%") == 2, pred.stderr


def test_submit_refusals(cli, stack: Any, teacher: dict) -> None:
    auth = ["--url", stack.url, "--api-key", stack.key]

    def refused(*args: str, needles: tuple[str, ...]) -> None:
        result = cli("submit", "--dataset", "digits", "--no-follow", *args, *auth)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr
        for needle in needles:
            assert needle in result.stderr, (needle, result.stderr)

    refused("--init", "project", needles=("init", "needs a teacher_model_id"))
    refused("--teacher", teacher["id"], "--init", "warm", needles=("init", "'project'"))
    refused("--teacher", "0" * 32, needles=("no model",))  # looked up for its architecture
    refused("--teacher", "0" * 32, "--preset", "mnist-cnn",
            needles=("teacher_model_id", "unknown model"))  # fmt: skip
    refused("--teacher", teacher["id"], "--distill-alpha", "0",
            needles=("teacher_model_id", "would not be used"))  # fmt: skip
    refused("--teacher", teacher["id"], "--init", "project", "--preset", "cifar-cnn",
            needles=("architecture", "the teacher"))  # fmt: skip


@pytest.mark.browser
def test_dashboard_launches_a_job_with_a_teacher(stack: Any, teacher: dict) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium chromium-driver)")
    expect = playwright_api.expect
    errors: list[str] = []
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_default_timeout(15_000)
        try:
            page.goto(f"{stack.url}/?poll_ms=100")
            page.fill("#signin-key", stack.key)
            page.click("#signin-form button[type=submit]")
            page.wait_for_selector(f'#f-teacher option[value="{teacher["id"]}"]', state="attached")
            page.select_option("#f-dataset", "digits")
            # Start and weight mean something only with a teacher.
            expect(page.locator("#f-init")).to_be_disabled()
            expect(page.locator("#f-distill-alpha")).to_be_disabled()
            page.select_option("#f-teacher", teacher["id"])
            expect(page.locator("#f-init")).to_be_enabled()

            # The API's refusal lands next to the teacher field.
            page.fill("#f-distill-alpha", "0")
            page.fill("#f-compression", "1/8")
            page.fill("#f-epochs", "1")
            page.click("#launch-submit")
            expect(page.locator('[data-error-for="teacher_model_id"]')).to_contain_text(
                "would not be used"
            )

            # A projection keeps the teacher's network: the preset is not asked for.
            page.select_option("#f-init", "project")
            expect(page.locator("#f-architecture")).to_be_disabled()
            page.fill("#f-distill-alpha", "0.5")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "teacher-launch.png"), full_page=True)
            page.click("#launch-submit")
            page.wait_for_url(re.compile(r"#/job/[0-9a-f]+$"))
            facts = page.locator("#job-facts")
            expect(facts).to_contain_text("projected start · distilled (α 0.5)")
            expect(facts.locator("a[data-teacher]")).to_have_text(teacher["id"][:8])
            expect(page.locator("#job-state")).to_have_text("succeeded", timeout=120_000)
            page.screenshot(path=str(ARTIFACTS / "teacher-job.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
