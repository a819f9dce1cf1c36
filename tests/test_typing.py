"""The rooms that style.md holds to ``mypy --strict`` stay clean (engine, kernel_ext, widgets)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_strict_rooms_type_check() -> None:
    pytest.importorskip("mypy")
    cmd = [sys.executable, "-m", "mypy", "--follow-imports=silent",
           "-p", "comfy_notebook.engine", "-p", "comfy_notebook.kernel_ext", "-p", "comfy_notebook.widgets"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
