"""Model merging through ``Session.run_prompt`` on tiny SD1 checkpoints: ComfyUI's formulas
(Comfy-Org/ComfyUI@a125cd8 nodes_model_merging*.py), merges as patches on shared bases (no
reload when a ratio changes), CheckpointSave writing a file CheckpointLoaderSimple reads back
to the same image, and ComfyUI's basic and inpaint merging examples."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import Any

import pytest
import torch
from safetensors import safe_open

from comfy_notebook._session import Session
from comfy_notebook.nodes import register_builtins
from comfy_notebook.runtime.merge import effective_weights
from comfy_notebook.testing import make_checkpoint, make_masked_image, preset_configs

A, B, C, INPAINT = "a.safetensors", "b.safetensors", "c.safetensors", "inpaint.safetensors"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("comfy")
    ckpts = base / "models" / "checkpoints"
    for name, seed in ((A, 0), (B, 1), (C, 2)):
        make_checkpoint(ckpts / name, preset="sd1-tiny", seed=seed)
    unet = dataclasses.replace(preset_configs("sd1-tiny")[0], in_channels=9)
    make_checkpoint(ckpts / INPAINT, preset="sd1-tiny", seed=3, unet=unet)
    make_masked_image(base / "input" / "photo.png")
    return base


@pytest.fixture(scope="module")
def session(root: pathlib.Path) -> Session:
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    return s


def loaders() -> dict[str, Any]:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": A}},
            "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": B}}}


def txt2img(api: dict[str, Any], model: list[Any], clip: list[Any] | None = None,
            vae: list[Any] | None = None) -> dict[str, Any]:
    clip, vae = clip or ["1", 1], vae or ["1", 2]
    api.update({
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": clip}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": 3, "steps": 3, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": vae}},
    })
    return api


def merged(session: Session, class_type: str, inputs: dict[str, Any], slot_a: int = 0) -> Any:
    api = loaders()
    a, b = ("model1", "model2") if slot_a == 0 else ("clip1", "clip2")
    api["10"] = {"class_type": class_type, "inputs": {a: ["1", slot_a], b: ["2", slot_a], **inputs}}
    result = session.run_prompt(api, targets=["10"])
    return result.outputs["10"][0], result.outputs["1"][slot_a], result.outputs["2"][slot_a]


def weights(value: Any) -> dict[str, torch.Tensor]:
    return effective_weights(value.ref)


def test_simple_ratio_endpoints_are_exact_and_middle_is_the_formula(session: Session) -> None:
    for ratio, expect in ((1.0, "a"), (0.0, "b")):
        m, a, b = merged(session, "ModelMergeSimple", {"ratio": ratio})
        wm, wa, wb = weights(m), weights(a), weights(b)
        ref = wa if expect == "a" else wb
        assert all(torch.equal(wm[k], ref[k]) for k in wm)
    m, a, b = merged(session, "ModelMergeSimple", {"ratio": 0.3})
    wm, wa, wb = weights(m), weights(a), weights(b)
    for k in wm:
        torch.testing.assert_close(wm[k], 0.3 * wa[k] + 0.7 * wb[k], rtol=0, atol=1e-6)
    # the merge is a clone of model1's base: no weights were copied
    assert m.ref.base is a.ref.base and len(m.ref.patches) == len(wa)


def test_merged_images_at_the_endpoints_equal_the_bases(session: Session) -> None:
    def image(api: dict[str, Any]) -> torch.Tensor:
        return session.run_prompt(api, targets=["8"]).outputs["8"][0]

    only_a = image(txt2img(loaders(), ["1", 0]))
    only_b = image(txt2img(loaders(), ["2", 0]))
    for ratio, ref in ((1.0, only_a), (0.0, only_b)):
        api = loaders()
        api["10"] = {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": ratio}}
        assert torch.equal(image(txt2img(api, ["10", 0])), ref)
    assert not torch.equal(only_a, only_b)


def test_subtract_add_and_blocks(session: Session) -> None:
    m, a, b = merged(session, "ModelMergeSubtract", {"multiplier": 0.5})
    wm, wa, wb = weights(m), weights(a), weights(b)
    for k in list(wm)[:40]:
        torch.testing.assert_close(wm[k], 0.5 * wa[k] - 0.5 * wb[k], rtol=0, atol=1e-6)
    m, _, _ = merged(session, "ModelMergeAdd", {})
    wm = weights(m)
    for k in list(wm)[:40]:
        torch.testing.assert_close(wm[k], wa[k] + wb[k], rtol=0, atol=1e-6)
    m, _, _ = merged(session, "ModelMergeBlocks", {"input": 0.2, "middle": 0.6, "out": 0.9})
    wm = weights(m)
    for k in wm:
        # "out" also prefixes "output_blocks": ComfyUI's prefix rule, so both take the out ratio;
        # keys matching no name (time_embed) take the first ratio
        r = 0.2 if k.startswith(("input", "time_embed")) else 0.6 if k.startswith("middle") else 0.9
        torch.testing.assert_close(wm[k], r * wa[k] + (1 - r) * wb[k], rtol=0, atol=1e-6)


def test_merge_sd1_per_block_ratios(session: Session) -> None:
    from comfy_notebook.nodes.merging import SD1_MERGE_BLOCKS, ModelMergeSD1

    spec = ModelMergeSD1.INPUT_TYPES()["required"]
    assert list(spec)[:4] == ["model1", "model2", "time_embed.", "label_emb."]
    assert list(spec)[-1] == "out." and len(spec) == 2 + len(SD1_MERGE_BLOCKS) == 32
    ratios = {name: 1.0 for name in SD1_MERGE_BLOCKS}
    ratios.update({"input_blocks.1.": 0.0, "input_blocks.11.": 0.25, "out.": 0.5})
    m, a, b = merged(session, "ModelMergeSD1", ratios)
    wm, wa, wb = weights(m), weights(a), weights(b)
    checked = 0
    for k in wm:
        r = 0.0 if k.startswith("input_blocks.1.") else 0.25 if k.startswith("input_blocks.11.") \
            else 0.5 if k.startswith("out.") else 1.0
        torch.testing.assert_close(wm[k], r * wa[k] + (1 - r) * wb[k], rtol=0, atol=1e-6)
        checked += r != 1.0
    assert checked > 0
    from comfy_notebook.nodes.merging import SDXL_MERGE_BLOCKS

    assert "input_blocks.8" in SDXL_MERGE_BLOCKS and "output_blocks.8" in SDXL_MERGE_BLOCKS


@pytest.mark.parametrize(("class_type", "inputs", "formula"), [
    ("CLIPMergeSimple", {"ratio": 0.25}, lambda a, b: 0.25 * a + 0.75 * b),
    ("CLIPMergeSubtract", {"multiplier": 2.0}, lambda a, b: 2.0 * a - 2.0 * b),
    ("CLIPMergeAdd", {}, lambda a, b: a + b),
])
def test_clip_merges(session: Session, class_type: str, inputs: dict[str, Any], formula: Any) -> None:
    m, a, b = merged(session, class_type, inputs, slot_a=1)
    wm, wa, wb = weights(m), weights(a), weights(b)
    assert m.tokenizer is a.tokenizer
    for k in wm:
        torch.testing.assert_close(wm[k], formula(wa[k], wb[k]), rtol=0, atol=1e-5)


def test_changing_a_ratio_never_reloads_the_bases(root: pathlib.Path) -> None:
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    images = []
    for ratio in (0.3, 0.7, 0.3):
        api = loaders()
        api["10"] = {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": ratio}}
        result = s.run_prompt(txt2img(api, ["10", 0]), targets=["8"])
        images.append(result.outputs["8"][0])
        if ratio != 0.3 or len(images) > 1:
            assert {"1", "2"} <= result.cached
    assert s.models.stats.reloads == 0
    assert torch.equal(images[0], images[2]) and not torch.equal(images[0], images[1])
    assert len(s.models) == 6  # two checkpoints x (unet, clip, vae): nothing registered for merges


def test_checkpoint_save_reloads_to_the_same_image(session: Session, root: pathlib.Path) -> None:
    api = loaders()
    api["10"] = {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 0.4}}
    api["11"] = {"class_type": "CLIPMergeSimple", "inputs": {"clip1": ["1", 1], "clip2": ["2", 1], "ratio": 0.6}}
    api = txt2img(api, ["10", 0], ["11", 0])
    api["20"] = {"class_type": "CheckpointSave", "inputs": {
        "model": ["10", 0], "clip": ["11", 0], "vae": ["1", 2], "filename_prefix": "checkpoints/merged"}}
    result = session.run_prompt(api, targets=["8", "20"],
                                extra_data={"extra_pnginfo": {"workflow": {"nodes": []}}})
    saved = result.ui["20"]["checkpoints"][0]
    assert saved["subfolder"] == "checkpoints" and saved["filename"] == "merged_00001_.safetensors"
    path = root / "output" / "checkpoints" / saved["filename"]
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    with safe_open(str(root / "models" / "checkpoints" / A), "pt") as f:
        original = {k for k in f.keys() if k.startswith(("model.diffusion_model.", "first_stage_model.",  # noqa: SIM118
                                                          "cond_stage_model.transformer."))
                    and not k.endswith("position_ids")}
    assert keys == original  # ComfyUI's SD1 key layout, no extras
    assert meta["modelspec.predict_key"] == "epsilon"
    assert json.loads(meta["prompt"])["10"]["class_type"] == "ModelMergeSimple"
    assert json.loads(meta["workflow"]) == {"nodes": []}
    shutil.copy(path, root / "models" / "checkpoints" / "merged.safetensors")
    again = txt2img({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "merged.safetensors"}}},
                    ["1", 0])
    reloaded = session.run_prompt(again, targets=["8"]).outputs["8"][0]
    assert torch.equal(reloaded, result.outputs["8"][0])


def test_comfyui_inpaint_merge_example(session: Session) -> None:
    """inpaint + (custom - base): the 9-channel input conv differs and is kept, with a warning."""
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": INPAINT}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": B}},
        "3b": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": C}},
        "10": {"class_type": "ModelMergeSubtract", "inputs": {"model1": ["2", 0], "model2": ["3b", 0], "multiplier": 1.0}},
        "11": {"class_type": "ModelMergeAdd", "inputs": {"model1": ["1", 0], "model2": ["10", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "12": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "13": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["12", 0], "vae": ["1", 2], "mask": ["12", 1], "grow_mask_by": 6}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["11", 0], "seed": 1, "steps": 3, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["13", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
    }
    with pytest.warns(UserWarning, match=r"input_blocks\.0\.0\.weight"):
        result = session.run_prompt(api, targets=["8"])
    image = result.outputs["8"][0]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    w = effective_weights(result.outputs["11"][0].ref)
    wi, wb, wc = (effective_weights(result.outputs[n][0].ref) for n in ("1", "2", "3b"))
    assert torch.equal(w["input_blocks.0.0.weight"], wi["input_blocks.0.0.weight"])
    k = "middle_block.0.in_layers.2.weight"
    torch.testing.assert_close(w[k], wi[k] + (wb[k] - wc[k]), rtol=0, atol=1e-5)
    again = session.run_prompt(api, targets=["8"])
    assert torch.equal(again.outputs["8"][0], image)  # deterministic
