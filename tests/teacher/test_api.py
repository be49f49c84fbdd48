"""A job names a teacher: what POST /v1/jobs accepts and stores, each refusal a 422 naming the
field, and deleting a model that an unfinished job learns from (409 until the job ends)."""

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, update

from app.db.models import Job, JobState, Model

from ..service.conftest import new_session, owner_id
from .conftest import TINY_SPEC, spec_with, store_model


def job_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "dataset": "digits",
        "architecture": TINY_SPEC,
        "method": "freshnets",
        "compression": "1/8",
        "training": {"epochs": 1, "batch_size": 32},
    }
    body.update(overrides)
    return body


@pytest.fixture
def models(client: TestClient, alice: dict[str, str], bob: dict[str, str]) -> dict[str, str]:
    """Stored models: alice's dense teacher, her freshnets one, two whose networks do not fit
    digits (3 channels; 3 classes), and bob's dense one."""
    alice_id, bob_id = owner_id(client, alice), owner_id(client, bob)
    with new_session(client) as session:
        return {
            "dense": store_model(session, alice_id),
            "freshnets": store_model(session, alice_id, method="freshnets", compression=1 / 8),
            "rgb": store_model(session, alice_id, spec=spec_with(input_shape=[3, 8, 8])),
            "three": store_model(
                session, alice_id, spec=spec_with(num_classes=3, layer6={"out_features": 3})
            ),
            "bob": store_model(session, bob_id),
        }


def post(client: TestClient, headers: dict[str, str], **overrides: Any) -> Any:
    return client.post("/v1/jobs", headers=headers, json=job_body(**overrides))


def refusal(response: Any) -> tuple[str, str]:
    """(the field, the message) of a one-error 422."""
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    return ".".join(map(str, error["loc"])), error["msg"]


def test_a_teacher_job_is_stored_and_shown(
    client: TestClient, alice: dict[str, str], models: dict[str, str]
) -> None:
    made = post(client, alice, teacher_model_id=models["dense"], init="project")
    assert made.status_code == 202, made.text
    job = made.json()
    assert job["teacher_model_id"] == models["dense"] and job["init"] == "project"
    assert job["training"]["distill_alpha"] == 0.5  # freshcore's default: distil as well
    assert (
        client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["teacher_model_id"]
        == (models["dense"])
    )
    listed = {j["id"]: j for j in client.get("/v1/jobs", headers=alice).json()["items"]}
    assert listed[job["id"]]["init"] == "project"
    with new_session(client) as session:
        row = session.get(Job, job["id"])
        assert row is not None
        assert (row.teacher_model_id, row.init, row.state) == (
            models["dense"],
            "project",
            JobState.queued,
        )

    # Without a teacher nothing changes: init defaults to scratch.
    plain = post(client, alice).json()
    assert (plain["teacher_model_id"], plain["init"]) == (None, "scratch")


ACCEPTED = [
    # Projection only (no distillation), with the job's own budget split.
    ("dense", {"init": "project", "training": {"epochs": 1, "distill_alpha": 0},
               "model_options": {"budget_policy": "conv-boost"}}),
    # Distillation only, from a compressed teacher into a smaller network.
    ("freshnets", {"architecture": spec_with(layer4={"out_features": 16})}),
    # A dense student started from its dense teacher: fine-tuning.
    ("dense", {"init": "project", "method": "dense"}),
    # The teacher's layers under another name are the teacher's network.
    ("dense", {"init": "project", "architecture": {**TINY_SPEC, "name": "renamed"}}),
]  # fmt: skip


@pytest.mark.parametrize(("teacher", "overrides"), ACCEPTED)
def test_accepted_combinations(
    client: TestClient,
    alice: dict[str, str],
    models: dict[str, str],
    teacher: str,
    overrides: dict[str, Any],
) -> None:
    made = post(client, alice, teacher_model_id=models[teacher], **overrides)
    assert made.status_code == 202, made.text
    assert made.json()["teacher_model_id"] == models[teacher]


REFUSED: list[tuple[str, Callable[[dict[str, str]], dict[str, Any]], str, str]] = [
    ("unknown", lambda m: {"teacher_model_id": "0" * 32},
     "body.teacher_model_id", f"unknown model '{'0' * 32}'"),
    # Another owner's model reads exactly like a model that does not exist.
    ("someone else's", lambda m: {"teacher_model_id": m["bob"]},
     "body.teacher_model_id", "unknown model '{bob}'"),
    ("inputs do not fit", lambda m: {"teacher_model_id": m["rgb"]},
     "body.teacher_model_id", "inputs of shape (3, 8, 8), the data set's are (1, 8, 8)"),
    ("classes do not fit", lambda m: {"teacher_model_id": m["three"]},
     "body.teacher_model_id", "predicts 3 classes, the data set has 10"),
    ("project without teacher", lambda m: {"init": "project"},
     "body.init", "needs a teacher_model_id"),
    ("project from a compressed teacher",
     lambda m: {"teacher_model_id": m["freshnets"], "init": "project"},
     "body.teacher_model_id", "needs a dense teacher"),
    ("project onto another network",
     lambda m: {"teacher_model_id": m["dense"], "init": "project",
                "architecture": spec_with(layer4={"out_features": 32})},
     "body.architecture", "layer 4 is"),
    ("project onto other widths",
     lambda m: {"teacher_model_id": m["dense"], "init": "project", "method": "equivalent"},
     "body.method", "'equivalent'"),
    ("a teacher that would not be used",
     lambda m: {"teacher_model_id": m["dense"], "training": {"epochs": 1, "distill_alpha": 0}},
     "body.teacher_model_id", "would not be used"),
    ("unknown init", lambda m: {"teacher_model_id": m["dense"], "init": "warm"},
     "body.init", "'scratch' or 'project'"),
    ("NUL in the id", lambda m: {"teacher_model_id": "a\x00b"}, "body.teacher_model_id", "match"),
    ("empty id", lambda m: {"teacher_model_id": ""}, "body.teacher_model_id", "at least 1"),
    # The job's own checks still come first and still name their field.
    ("a compression lrd cannot reach",
     lambda m: {"teacher_model_id": m["dense"], "init": "project", "method": "lrd",
                "compression": "1/4096"},
     "body.compression", "too small for this network"),
    ("a bad distillation weight",
     lambda m: {"teacher_model_id": m["dense"], "training": {"epochs": 1, "distill_alpha": 2}},
     "body.training.distill_alpha", "distill_alpha"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "field", "says"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_refusals_name_the_field(
    client: TestClient,
    alice: dict[str, str],
    models: dict[str, str],
    body: Callable[[dict[str, str]], dict[str, Any]],
    field: str,
    says: str,
) -> None:
    with new_session(client) as session:
        before = session.query(Job).count()
    loc, msg = refusal(post(client, alice, **body(models)))
    assert loc == field, msg
    assert says.format(**models) in msg, msg
    with new_session(client) as session:
        assert session.query(Job).count() == before  # nothing was queued


def test_a_teacher_over_the_size_limits(
    make_client: Callable[..., TestClient], models: dict[str, str], alice: dict[str, str]
) -> None:
    """The limits that bound every model bound the teacher the worker would load: its file
    (FRESHNETS_MAX_MODEL_BYTES) and its network (FRESHNETS_MAX_VIRTUAL_WEIGHTS)."""
    small_student = spec_with(layer4={"out_features": 4})  # about 1.2k weights; the teacher 17k
    small_files = make_client(max_model_bytes=20_000)
    loc, msg = refusal(
        small_files.post("/v1/jobs", headers=alice, json=job_body(teacher_model_id=models["dense"]))
    )
    assert loc == "body.teacher_model_id" and "FRESHNETS_MAX_MODEL_BYTES (20,000)" in msg, msg

    small_networks = make_client(max_virtual_weights=10_000)
    body = job_body(teacher_model_id=models["dense"], architecture=small_student)
    loc, msg = refusal(small_networks.post("/v1/jobs", headers=alice, json=body))
    assert loc == "body.teacher_model_id" and "FRESHNETS_MAX_VIRTUAL_WEIGHTS" in msg, msg
    # The same student without the teacher is within both limits.
    del body["teacher_model_id"]
    assert small_networks.post("/v1/jobs", headers=alice, json=body).status_code == 202


def test_deleting_a_teacher_waits_for_its_jobs(
    client: TestClient, alice: dict[str, str], bob: dict[str, str], models: dict[str, str]
) -> None:
    teacher = models["dense"]
    queued = post(client, alice, teacher_model_id=teacher, init="project").json()["id"]
    running = post(client, alice, teacher_model_id=teacher).json()["id"]
    with new_session(client) as session:
        session.execute(update(Job).where(Job.id == running).values(state=JobState.running))
        session.commit()

    refused = client.delete(f"/v1/models/{teacher}", headers=alice)
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith("model: ") and queued in detail and running in detail, detail
    assert client.get(f"/v1/models/{teacher}", headers=alice).status_code == 200
    # Bob cannot even see it (404, not 409).
    assert client.delete(f"/v1/models/{teacher}", headers=bob).status_code == 404

    # The queued job is cancelled; the running one still holds the teacher.
    assert client.post(f"/v1/jobs/{queued}/cancel", headers=alice).json()["state"] == "cancelled"
    again = client.delete(f"/v1/models/{teacher}", headers=alice)
    assert again.status_code == 409 and queued not in again.json()["detail"]
    assert running in again.json()["detail"]
    with new_session(client) as session:
        session.execute(update(Job).where(Job.id == running).values(state=JobState.failed))
        session.commit()

    # Every job using it is final: the model goes, the jobs stay with the teacher cleared.
    assert client.delete(f"/v1/models/{teacher}", headers=alice).status_code == 204
    assert client.get(f"/v1/models/{teacher}", headers=alice).status_code == 404
    for job_id, init in ((queued, "project"), (running, "scratch")):
        job = client.get(f"/v1/jobs/{job_id}", headers=alice).json()
        assert (job["teacher_model_id"], job["init"]) == (None, init)
    # A model no job names is deleted as before.
    assert client.delete(f"/v1/models/{models['freshnets']}", headers=alice).status_code == 204


def test_a_teacher_deleted_while_its_job_is_created(
    client: TestClient, alice: dict[str, str], models: dict[str, str]
) -> None:
    """The model goes between the checks and the INSERT (just before the owner's quota lock,
    which on SQLite holds the one writer until the job is in): the job's foreign key refuses
    it, and the answer is the same 422 as for a model that never existed, not a 500."""
    maker = client.app.state.sessionmaker  # type: ignore[attr-defined]
    engine = maker.kw["bind"]
    teacher = models["dense"]
    deleted: list[str] = []

    def delete_teacher(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        lock = statement.startswith("UPDATE owners") or "FOR UPDATE" in statement
        if lock and not deleted:
            deleted.append(teacher)
            with maker() as other:
                other.delete(other.get(Model, teacher))
                other.commit()

    event.listen(engine, "before_cursor_execute", delete_teacher)
    try:
        loc, msg = refusal(post(client, alice, teacher_model_id=teacher))
    finally:
        event.remove(engine, "before_cursor_execute", delete_teacher)
    assert deleted == [teacher]
    assert (loc, msg) == ("body.teacher_model_id", f"unknown model {teacher!r}")
    with new_session(client) as session:
        assert session.query(Job).filter(Job.teacher_model_id.is_not(None)).count() == 0
