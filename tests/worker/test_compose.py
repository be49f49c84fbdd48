"""docker-compose.yml and the Dockerfile agree with the settings and the CLI (no Docker here)."""

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from typer.testing import CliRunner

from app.cli import cli
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# ${VAR:-default} -> default; ${VAR} -> "" (compose's own substitution)
_SUBST = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def _substitute(value: str) -> str:
    return _SUBST.sub(lambda m: m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _substitute(str(v)) for k, v in env.items()}


def _resolve_cli(args: list[str]) -> None:
    """`freshnets <args> --help` through the real command tree fails on an unknown command."""
    words = [a for a in args if not a.startswith("-")]
    result = CliRunner().invoke(cli, [*words, "--help"])
    assert result.exit_code == 0, f"`freshnets {' '.join(args)}`: {result.output}"
    assert "Commands" not in result.output, f"`freshnets {' '.join(args)}` is a group"


def test_services_present(services: dict[str, Any]) -> None:
    assert {"api", "worker", "redis", "postgres", "migrate"} <= set(services)


def test_every_freshnets_variable_is_a_setting(services: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    # ${FRESHNETS_...} read from the host by compose must be settings too (one meaning per name).
    text = (ROOT / "docker-compose.yml").read_text()
    for name in re.findall(r"\$\{(FRESHNETS_[A-Z0-9_]+)", text):
        assert name.removeprefix("FRESHNETS_").lower() in fields, name
    seen = 0
    for name, service in services.items():
        env = _env(service)
        values = {}
        for key, value in env.items():
            if not key.startswith("FRESHNETS_"):
                continue
            field = key.removeprefix("FRESHNETS_").lower()
            assert field in fields, f"{name}: {key} is not a Settings field"
            values[field] = value
            seen += 1
        Settings(**values)  # and each value validates as that setting
    assert seen


def test_app_services_share_database_and_broker(services: dict[str, Any]) -> None:
    pg = _env(services["postgres"])
    for name in ("api", "worker", "migrate"):
        settings = Settings(
            **{
                k.removeprefix("FRESHNETS_").lower(): v
                for k, v in _env(services[name]).items()
                if k.startswith("FRESHNETS_")
            }
        )
        db = urlsplit(settings.database_url)
        assert db.scheme == "postgresql+psycopg", name
        assert db.hostname == "postgres" and db.port == 5432, name
        assert db.username == pg["POSTGRES_USER"] and db.password == pg["POSTGRES_PASSWORD"]
        assert db.path.lstrip("/") == pg["POSTGRES_DB"], name
        broker = urlsplit(settings.redis_url)
        assert broker.scheme == "redis" and broker.hostname == "redis", name


def test_api_command_port_and_health(services: dict[str, Any]) -> None:
    api = services["api"]
    settings = Settings(
        **{
            k.removeprefix("FRESHNETS_").lower(): v
            for k, v in _env(api).items()
            if k.startswith("FRESHNETS_")
        }
    )
    cmd = api["command"]
    assert cmd[:2] == ["uvicorn", "app.main:app"]
    assert cmd[cmd.index("--host") + 1] == settings.host == "0.0.0.0"
    assert int(cmd[cmd.index("--port") + 1]) == settings.port
    published = [_substitute(p).rsplit(":", 1)[1] for p in api["ports"]]
    assert str(settings.port) in published
    health = " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{settings.port}/healthz" in health


def test_cli_commands_exist(services: dict[str, Any]) -> None:
    for name in ("worker", "migrate"):
        cmd = services[name]["command"]
        assert cmd[0] == "freshnets", name
        _resolve_cli(cmd[1:])
    assert services["migrate"]["command"][1:] == ["db", "upgrade"]
    assert services["worker"]["command"][1:] == ["worker"]


def test_migrations_run_before_api_and_workers(services: dict[str, Any]) -> None:
    assert services["migrate"].get("restart", "no") == "no"
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_worker_scales(services: dict[str, Any]) -> None:
    worker = services["worker"]
    # --scale worker=N needs no fixed name and no published port.
    assert "container_name" not in worker and "ports" not in worker
    assert _env(worker)["FRESHNETS_WORKER_CONCURRENCY"] == "1"
    health = worker["healthcheck"]["test"][-1]
    assert "celery -A worker.celery_app inspect ping" in health
    # A warm shutdown hands the job back; give it time before Docker's SIGKILL.
    assert worker.get("stop_grace_period")


def test_long_running_services_have_health_checks(services: dict[str, Any]) -> None:
    for name in ("api", "worker", "redis", "postgres"):
        assert services[name]["healthcheck"]["test"], name


def test_dockerfile_cpu_default_and_cuda_argument(services: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", dockerfile, re.M)
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in dockerfile
    for name in ("api", "worker", "migrate"):
        build = services[name]["build"]
        assert _substitute(build["args"]["TORCH_VARIANT"]) == "cpu", name
    # The image copies every package the services import.
    for package in ("freshcore", "app", "worker", "migrations"):
        assert f"COPY {package} ./{package}" in dockerfile


def test_deployment_doc_names_only_real_settings() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    named = set(re.findall(r"FRESHNETS_([A-Z0-9_]+)", doc))
    assert named, "the deployment guide names no settings"
    unknown = {n for n in named if n.lower() not in Settings.model_fields}
    assert not unknown, f"docs/deployment.md names unknown settings: {sorted(unknown)}"
