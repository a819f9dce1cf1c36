"""Fixtures of the reliability tests: a models folder with the tiny SD1 checkpoint; the
harness module (``harness.py`` beside this file) importable as ``harness``."""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from harness import CKPT


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """``models/checkpoints/tiny.safetensors`` (+ input/output), made once."""
    from comfy_notebook.testing import make_checkpoint

    base = tmp_path_factory.mktemp("reliability")
    make_checkpoint(base / "models" / "checkpoints" / CKPT, preset="sd1-tiny", seed=0)
    (base / "input").mkdir()
    return base


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """One intra-op thread: bit-identical reruns and no fight over the shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def _frozen_heap() -> object:
    """Freeze the imported heap so the harness's many gc passes stay cheap; unfreeze after."""
    import gc

    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
    gc.collect()
