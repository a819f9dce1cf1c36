"""Fixtures for interop tests: the packs in packs/, loaded into a fresh session with the shims.

The shims (folder_paths, comfy, server, comfy_api, comfy_execution) and the packs' modules are
removed from ``sys.modules`` and ``sys.path`` afterwards, so other tests never see them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKS = Path(__file__).with_name("packs")


@pytest.fixture
def clean_imports() -> Iterator[None]:
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


@pytest.fixture
def session(tmp_path: Path, clean_imports: None):
    from comfy_notebook import Session

    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "a.safetensors").write_bytes(b"")
    (models / "checkpoints" / "sub").mkdir()
    (models / "checkpoints" / "sub" / "b.safetensors").write_bytes(b"")
    return Session(models_dir=models, output_dir=tmp_path / "output")
