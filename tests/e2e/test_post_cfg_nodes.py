"""End to end: CFGNorm / CFGZeroStar patch a MODEL's guidance through run_prompt (tiny SD1 checkpoint)."""

from __future__ import annotations

import copy
import pathlib

import pytest
import torch

from comfy_notebook._session import Session
from comfy_notebook.demo import default_prompt
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import make_checkpoint


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("comfy")
    make_checkpoint(base / "models" / "checkpoints" / "tiny.safetensors", preset="sd1-tiny", seed=0)
    return base


def run(root: pathlib.Path, patch: dict | None = None) -> torch.Tensor:
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    api = default_prompt()
    api["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
    api["5"]["inputs"].update(width=64, height=64)
    api["3"]["inputs"].update(steps=3, cfg=8.0)
    if patch is not None:
        api["50"] = copy.deepcopy(patch)
        api["3"]["inputs"]["model"] = ["50", 0]
    return s.run_prompt(api).outputs["3"][0]["samples"]


def test_post_cfg_nodes_change_the_guided_result(root):
    plain = run(root)
    norm = run(root, {"class_type": "CFGNorm", "inputs": {"model": ["4", 0], "strength": 1.0}})
    zero = run(root, {"class_type": "CFGZeroStar", "inputs": {"model": ["4", 0]}})
    assert torch.isfinite(norm).all() and torch.isfinite(zero).all()
    assert not torch.equal(norm, plain) and not torch.equal(zero, plain)
    again = run(root, {"class_type": "CFGNorm", "inputs": {"model": ["4", 0], "strength": 1.0}})
    assert torch.equal(again, norm)
    weaker = run(root, {"class_type": "CFGNorm", "inputs": {"model": ["4", 0], "strength": 0.5}})
    assert not torch.equal(weaker, norm)
