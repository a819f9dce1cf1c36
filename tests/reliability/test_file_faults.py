"""Errors at every file read and every PNG write (issue 19): an ``OSError`` injected at each
file operation the product makes — checkpoint, LoRA and embedding reads, file identities,
image loads, PNG writes — enumerated by ``io_faults.FileInjector`` from the product's own functions,
ends in one clear error (or is recovered from) and leaves the harness's invariants: no model in
use, no reserved memory, no cache entry for an unfinished node, no leaked tensors, no
half-written PNG, and a bit-identical rerun."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest
from harness import CKPT, clean_run, run_point, tiny_prompt
from io_faults import FileInjector, fault_for
from PIL import Image
from safetensors import safe_open


def file_prompt() -> dict[str, Any]:
    """img2img with a LoRA and an embedding on the tiny checkpoint: LoadImage -> VAEEncode ->
    KSampler (denoise 0.6) -> SaveImage; every kind of file the product reads is in it."""
    api = tiny_prompt(seed=3)
    api["10"] = {"class_type": "LoadImage", "inputs": {"image": "faults.png"}}
    api["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    api["12"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
                                                        "lora_name": "faults.safetensors",
                                                        "strength_model": 0.8, "strength_clip": 0.8}}
    api["3"]["inputs"].update(latent_image=["11", 0], denoise=0.6, model=["12", 0])
    api["6"]["inputs"].update(clip=["12", 1], text="a photo, embedding:faults")
    api["7"]["inputs"]["clip"] = ["12", 1]
    del api["5"]
    return api


def make_file_root(base: pathlib.Path) -> pathlib.Path:
    """A models folder for :func:`file_prompt`: the checkpoint, a LoRA, an embedding, an image."""
    from comfy_notebook.testing import make_checkpoint, make_embedding, make_lora

    ckpt = base / "models" / "checkpoints" / CKPT
    make_checkpoint(ckpt, preset="sd1-tiny", seed=0)
    make_lora(base / "models" / "loras" / "faults.safetensors", ckpt, seed=0)
    with safe_open(str(ckpt), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("token_embedding.weight"))  # noqa: SIM118
        width = int(f.get_slice(key).get_shape()[1])
    make_embedding(base / "models" / "embeddings" / "faults.safetensors", width, seed=0)
    (base / "input").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(base / "input" / "faults.png")
    return base


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return make_file_root(tmp_path_factory.mktemp("file-faults"))


def _valid_pngs(folder: pathlib.Path) -> list[str]:
    bad = []
    for path in folder.rglob("*.png"):
        try:
            with Image.open(path) as img:
                img.load()
        except Exception as exc:
            bad.append(f"{path.name}: {type(exc).__name__}")
    return bad


def test_file_sites_come_from_the_products_functions(root: pathlib.Path) -> None:
    ref = clean_run(root, file_prompt(), injector_type=FileInjector)
    sites = {p.site for p in ref.points if p.kind == "file"}
    assert any(s.startswith("write:nodes.image_io") for s in sites), sites  # the PNG write
    assert any(s.startswith("read:nodes.image_io") for s in sites), sites  # the image load
    assert any(s.startswith("read:runtime.") for s in sites), sites  # the checkpoint's tensors
    assert any(s.startswith("read:folders.identity") for s in sites), sites  # file identities
    assert any(s.startswith("read:runtime.lora") for s in sites), sites  # the LoRA
    assert any(s.startswith("read:models.prompt") for s in sites), sites  # the embedding


def test_os_error_at_every_file_read_and_write(root: pathlib.Path) -> None:
    api = file_prompt()
    ref = clean_run(root, api, injector_type=FileInjector)
    points = [p for p in ref.points if p.kind == "file"]
    assert len(points) >= 5
    bad, seen = [], []
    for p in points:
        o = run_point(root, api, ref, p, fault_for, injector_type=FileInjector)
        raised = o.raised
        if raised is not None and raised[0] not in ("NodeExecutionError", "ValidationError"):
            bad.append(f"{p}: raised {raised}")
        if raised is not None and raised[1] in ("OSError", "FileNotFoundError", "PermissionError"):
            bad.append(f"{p}: a bare {raised[1]} reached the user; expected a clear error: {raised[2]}")
        if p.site.startswith("write:") and (raised is None or raised[1] != "OutputWriteError"
                                             or "filename_prefix" not in raised[2]):
            bad.append(f"{p}: a failed PNG write must be one OutputWriteError, got {raised}")
        seen.append((str(p), raised[1] if raised is not None else "recovered"))
        bad += [f"{p}: {problem}" for problem in o.problems]
        bad += [f"{p}: leaked {leak}" for leak in o.leaks]
        if not o.identical:
            bad.append(f"{p}: rerun differs from the clean run")
    bad += _valid_pngs(root / "output")
    print("\n".join(f"{point}: {what}" for point, what in seen))
    assert bad == []
