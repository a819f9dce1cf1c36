"""Fixtures of the family tests: tiny checkpoint files of every preset."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random-weight sd1-tiny checkpoint file."""
    from comfy_notebook.testing import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "sd1-tiny.safetensors", "sd1-tiny")


@pytest.fixture(scope="session")
def preset_file(tmp_path_factory: pytest.TempPathFactory):
    """``preset_file(name)``: a tiny checkpoint of preset ``name`` (written once per session)."""
    from comfy_notebook.testing import make_checkpoint

    root = tmp_path_factory.mktemp("presets")
    made: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in made:
            made[name] = make_checkpoint(root / f"{name}.safetensors", name)
        return made[name]

    return get
