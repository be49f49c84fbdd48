"""`freshnets datasets list|fetch`."""

import json

from typer.testing import CliRunner

from app.cli.datasets import app

runner = CliRunner()


def test_list_json(tmp_path):
    result = runner.invoke(app, ["list", "--json", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    names = [d["name"] for d in json.loads(result.output)]
    assert "mnist" in names and "digits" in names


def test_list_table(tmp_path):
    result = runner.invoke(app, ["list", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0 and "rectangles" in result.output


def test_fetch(tmp_path):
    result = runner.invoke(app, ["fetch", "rectangles", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rectangles.npz").is_file()
    assert "ready" in result.output


def test_fetch_errors(tmp_path, monkeypatch):
    result = runner.invoke(app, ["fetch", "nope", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2 and "unknown data set 'nope'" in result.output
    monkeypatch.setenv("FRESHNETS_OFFLINE", "1")
    monkeypatch.delenv("FRESHNETS_CIFAR10_PATH", raising=False)
    result = runner.invoke(app, ["fetch", "cifar10", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 1 and "FRESHNETS_CIFAR10_PATH" in result.output
