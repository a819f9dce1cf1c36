"""CheckpointSave for every family with a checkpoint layout: SD1, SD2 (OpenCLIP ViT-H), SD2-v,
SDXL (CLIP-L + OpenCLIP bigG, modelspec metadata) and the SDXL refiner — the saved file has the
released key layout and CheckpointLoaderSimple reads back the same weights and prediction."""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import pytest
import torch
from safetensors import safe_open

from comfy_notebook._session import Session
from comfy_notebook.models.convert import OPENCLIP_EXTRAS
from comfy_notebook.models.detect import is_known_extra
from comfy_notebook.nodes import register_builtins
from comfy_notebook.runtime.merge import effective_weights
from comfy_notebook.testing import make_checkpoint


def _parts(result: Any, node: str) -> dict[str, Any]:
    model, clip, vae = result.outputs[node]
    return {"unet": model.ref, "vae": vae.ref, **dict(clip.refs)}


@pytest.mark.parametrize(("preset", "arch", "predict"), [
    ("sd1-tiny", None, "epsilon"), ("sd2", None, "epsilon"), ("sd2-v", None, "v"),
    ("sdxl", "stable-diffusion-xl-v1-base", "epsilon"),
    ("sdxl-refiner", "stable-diffusion-xl-v1-refiner", "epsilon")])
def test_save_and_reload(tmp_path: pathlib.Path, preset: str, arch: str | None, predict: str) -> None:
    src = make_checkpoint(tmp_path / "models" / "checkpoints" / "src.safetensors", preset=preset, seed=4)
    s = Session(models_dir=tmp_path, output_dir=tmp_path / "output")
    register_builtins(s)
    api = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "src.safetensors"}},
           "2": {"class_type": "CheckpointSave", "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                                             "filename_prefix": "checkpoints/saved"}}}
    result = s.run_prompt(api, targets=["1", "2"])
    saved = tmp_path / "output" / "checkpoints" / "saved_00001_.safetensors"
    with safe_open(str(saved), "pt") as f, safe_open(src, "pt") as g:
        meta = f.metadata()
        written = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        # known extras (schedule buffers, position ids) and OpenCLIP's logit_scale / attn_mask
        # are no model parameters: not written (ComfyUI writes its own logit_scale)
        original = {k: g.get_tensor(k) for k in g.keys()  # noqa: SIM118
                    if not is_known_extra(k) and not k.endswith(OPENCLIP_EXTRAS)}
    markers = {k for k in written if k in ("v_pred", "ztsnr")}
    assert set(written) - markers == set(original) - {"v_pred", "ztsnr"}
    for k, t in original.items():  # the file's own layout, tensor for tensor
        if k not in ("v_pred", "ztsnr"):
            assert torch.equal(written[k], t), k
    assert meta["modelspec.predict_key"] == predict and ("v_pred" in written) == (predict == "v")
    assert meta.get("modelspec.architecture") == arch
    assert json.loads(meta["prompt"])["2"]["class_type"] == "CheckpointSave"
    shutil.copy(saved, tmp_path / "models" / "checkpoints" / "again.safetensors")
    api["1"]["inputs"]["ckpt_name"] = "again.safetensors"
    again = s.run_prompt(api, targets=["1"])
    before, after = _parts(result, "1"), _parts(again, "1")
    assert set(before) == set(after)
    for name in before:
        wb, wa = effective_weights(before[name]), effective_weights(after[name])
        assert all(torch.equal(wb[k], wa[k]) for k in wb), name
    assert again.outputs["1"][0].model_sampling.prediction == result.outputs["1"][0].model_sampling.prediction
