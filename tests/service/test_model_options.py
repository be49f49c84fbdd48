"""A job's model options (allocation shape, budget split): checked by freshcore's own parsers at
request time (a 422 naming the option and the problem), stored as freshcore parsed them, returned
by the API, and counted by the model-size limit."""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

import freshcore
from app.db.models import Job
from app.limits import expected_model_bytes

from .conftest import new_session
from .test_api import SPEC, job_body
from .test_bad_input import detail_text

CONV_BOOST = {"kind": "conv-boost", "conv_factor": 4.0}

BAD_OPTIONS = [
    # (method, model_options, the field the message names, what it says is wrong)
    ("freshnets", {"allocation": "magic"}, "body.model_options.allocation", "'magic'"),
    ("freshnets", {"allocation": {"shape": "exponential", "decay": -1}},
     "body.model_options.allocation", "decay"),
    ("freshnets", {"allocation": {"shape": "beta", "a": 1, "c": 2}},
     "body.model_options.allocation", "beta.c"),
    ("freshnets", {"allocation": 5}, "body.model_options.allocation", "string"),
    ("freshnets", {"budget_policy": "magic"}, "body.model_options.budget_policy", "'magic'"),
    ("freshnets", {"budget_policy": {"kind": "conv-boost", "conv_factor": 0.5}},
     "body.model_options.budget_policy", "conv_factor"),
    ("freshnets", {"budget_policy": {"conv_factor": 4}},
     "body.model_options.budget_policy", "'kind'"),
    ("freshnets", {"bogus": 1}, "body.model_options.bogus", "Extra inputs"),
    ("freshnets", "conv-boost", "body.model_options", "object"),
    # freshnets-uniform takes only the uniform allocation; a malformed one gets one clean line.
    ("freshnets-uniform", {"allocation": "exponential"}, "body.model_options.allocation",
     "freshnets-uniform uses the uniform allocation"),
    ("freshnets-uniform", {"allocation": "magic"}, "body.model_options.allocation", "'magic'"),
    ("freshnets", {"width": 1.5}, "body.model_options.width", "(0, 1]"),
    ("equivalent", {"width": 0.5}, "body.model_options.width", "not 'equivalent'"),
    ("freshnets", {"width": "narrow"}, "body.model_options.width", "number"),
    ("lowfreq", {"balanced": True}, "body.model_options.balanced", "method 'lowfreq' has none"),
    ("freshnets", {"balanced": "yes"}, "body.model_options.balanced", "boolean"),
    ("freshnets", {"balanced": 1}, "body.model_options.balanced", "boolean"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "options", "field", "problem"), BAD_OPTIONS, ids=[str(c[1]) for c in BAD_OPTIONS]
)
def test_bad_options_name_the_field(
    client: TestClient,
    alice: dict[str, str],
    upload: Callable[..., dict],
    method: str,
    options: object,
    field: str,
    problem: str,
) -> None:
    dataset = upload(alice)["id"]
    body = job_body(dataset, method=method, model_options=options)
    response = client.post("/v1/jobs", headers=alice, json=body)
    assert response.status_code == 422, response.text
    text = detail_text(response)
    assert field in text and problem in text, text
    assert "\n" not in text and "validation error for" not in text, text  # one readable line
    with new_session(client) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_a_width_too_narrow_for_the_budget_is_refused_before_training(
    client: TestClient, alice: dict[str, str], upload: Callable[..., dict]
) -> None:
    body = job_body(upload(alice)["id"], compression="1/2", model_options={"width": 0.25})
    response = client.post("/v1/jobs", headers=alice, json=body)
    assert response.status_code == 422, response.text
    text = detail_text(response)
    assert "body.compression" in text and "use a larger width" in text, text


def test_options_are_stored_as_freshcore_parses_them(
    client: TestClient, alice: dict[str, str], upload: Callable[..., dict]
) -> None:
    dataset = upload(alice)["id"]

    def post(**overrides: object) -> dict:
        response = client.post("/v1/jobs", headers=alice, json=job_body(dataset, **overrides))
        assert response.status_code == 202, response.text
        return response.json()

    # No options: today's job, NULL in the row (not a JSON null).
    plain = post()
    assert plain["model_options"] is None
    # Names become freshcore's full form, defaults filled in.
    boosted = post(
        model_options={"allocation": {"shape": "beta", "b": 4}, "budget_policy": "conv-boost"}
    )
    assert boosted["model_options"] == {
        "allocation": {"shape": "beta", "a": 1.0, "b": 4.0},
        "budget_policy": CONV_BOOST,
    }
    # A method without frequency bands takes no allocation: freshcore ignores it, so does the job.
    hashed = post(
        method="hashednets",
        model_options={"allocation": "exponential", "budget_policy": CONV_BOOST},
    )
    assert hashed["model_options"] == {"allocation": None, "budget_policy": CONV_BOOST}
    # A width is kept only when given.
    narrow = post(method="hashednets", model_options={"width": 0.5})
    assert narrow["model_options"] == {
        "allocation": None, "budget_policy": {"kind": "uniform"}, "width": 0.5,
    }  # fmt: skip
    # So is balanced, even when false (what was asked).
    dealt = post(method="hashednets", model_options={"balanced": True})
    assert dealt["model_options"] == {
        "allocation": None, "budget_policy": {"kind": "uniform"}, "balanced": True,
    }  # fmt: skip
    hashed_again = post(method="lowfreq", model_options={"balanced": False})
    assert hashed_again["model_options"]["balanced"] is False

    assert (
        client.get(f"/v1/jobs/{boosted['id']}", headers=alice).json()["model_options"]
        == (boosted["model_options"])
    )
    listed = {j["id"]: j for j in client.get("/v1/jobs", headers=alice).json()["items"]}
    assert listed[hashed["id"]]["model_options"] == hashed["model_options"]
    with new_session(client) as session:
        nulls = session.scalars(select(Job.id).where(Job.model_options.is_(None))).all()
        assert nulls == [plain["id"]]
        row = session.get(Job, boosted["id"])
        assert row is not None and row.model_options == boosted["model_options"]


def test_expected_model_bytes_takes_the_options() -> None:
    """The limit's estimate is within freshcore's 2% of the model built with the same options;
    options the plan cannot take raise the ValueError the route turns into a 422."""
    spec = freshcore.resolve_spec(SPEC)
    for method, options in (
        ("freshnets", {"budget_policy": CONV_BOOST, "allocation": {"shape": "beta", "b": 4}}),
        ("hashednets", {"budget_policy": {"kind": "conv-boost", "conv_factor": 16}}),
        ("freshnets", {}),
        ("hashednets", {"width": 0.5}),
    ):
        expected = expected_model_bytes(spec, method, 1 / 2, 0, **options)
        model = freshcore.build_model(spec, method, 1 / 2, 0, **options)
        stored = 4 * freshcore.size_report(model).stored_parameters
        assert abs(expected - stored) <= 0.02 * stored, (method, options, expected, stored)
    with pytest.raises(ValueError, match="budget_policy"):
        expected_model_bytes(spec, "freshnets", 1 / 2, 0, budget_policy="magic")
    with pytest.raises(ValueError, match="freshnets-uniform"):
        expected_model_bytes(spec, "freshnets-uniform", 1 / 2, 0, allocation="beta")
