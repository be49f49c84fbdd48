"""The README's library example runs as printed: a reader's first contact must not raise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_library_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    text = README.read_text()
    blocks = re.findall(r"As a library:\n\n```python\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 1, "the README's library example moved: update this test"
    monkeypatch.chdir(tmp_path)  # it saves model.safetensors where it runs
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert (tmp_path / "model.safetensors").stat().st_size > 0
    assert "values stored" in capsys.readouterr().out
