"""End-to-end: SDXL base + refiner (ComfyUI's example prompt) and SD2.x through
``Session.run_prompt`` on tiny random checkpoints with the released key layouts (64 px).

Issue #12: bit-identical reruns, caching, LoRA strengths, unload/reload, separate-file loaders,
SD2 v-prediction detection and ``ModelSamplingDiscrete``.
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import pytest
import torch

from comfy_notebook._session import Session
from comfy_notebook.errors import NodeExecutionError
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import (
    make_checkpoint,
    make_lora,
    make_text_encoder_file,
    make_unet_file,
    make_vae_file,
)

PROMPT = "evening sunset scenery blue sky nature, glass bottle with a galaxy in it"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("comfy_xl")
    ck = base / "models" / "checkpoints"
    make_checkpoint(ck / "xl.safetensors", "sdxl", seed=0)
    make_checkpoint(ck / "xlr.safetensors", "sdxl-refiner", seed=1)
    make_checkpoint(ck / "sd2v.safetensors", "sd2-v", seed=2)
    make_checkpoint(ck / "sd2.safetensors", "sd2", seed=2)
    make_checkpoint(ck / "sd1.safetensors", "sd1-tiny", seed=3)
    # the SDXL checkpoint's parts as separate files (same weights: same seed and tags)
    make_unet_file(base / "models" / "diffusion_models" / "xl_unet.safetensors", "sdxl", seed=0)
    make_vae_file(base / "models" / "vae" / "xl_vae.safetensors", "sdxl", seed=0)
    te = base / "models" / "text_encoders"
    make_text_encoder_file(te / "clip_l.safetensors", "sdxl", seed=0, encoder="clip_l")
    make_text_encoder_file(te / "clip_g.safetensors", "sdxl", seed=0, encoder="clip_g")
    loras = base / "models" / "loras"
    make_lora(loras / "xl_lora.safetensors", ck / "xl.safetensors", rank=2, seed=5)
    make_lora(loras / "sd1_lora.safetensors", ck / "sd1.safetensors", rank=2, seed=5)
    return base


def new_session(root: pathlib.Path) -> Session:
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    return s


def example_prompt(seed: int = 721897303308196, steps: int = 4, split: int = 3) -> dict[str, Any]:
    """ComfyUI's SDXL base + refiner example (two KSamplerAdvanced step windows), at 64 px."""
    def enc(text: str, ckpt: str) -> dict[str, Any]:
        return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": [ckpt, 1]}}

    common = {"steps": steps, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal"}
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xl.safetensors"}},
        "12": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xlr.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": enc(PROMPT, "4"), "7": enc("text, watermark", "4"),
        "15": enc(PROMPT, "12"), "16": enc("text, watermark", "12"),
        "10": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["4", 0], "add_noise": "enable", "noise_seed": seed, **common, "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0], "start_at_step": 0, "end_at_step": split,
            "return_with_leftover_noise": "enable"}},
        "11": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["12", 0], "add_noise": "disable", "noise_seed": 0, **common, "positive": ["15", 0],
            "negative": ["16", 0], "latent_image": ["10", 0], "start_at_step": split, "end_at_step": 10000,
            "return_with_leftover_noise": "disable"}},
        "17": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["12", 2]}},
        "19": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["17", 0]}},
    }


@pytest.fixture(scope="module")
def shared(root: pathlib.Path) -> Session:
    return new_session(root)


def test_base_refiner_example_is_bit_identical_and_cached(root: pathlib.Path, shared: Session) -> None:
    api = example_prompt()
    first = shared.run_prompt(api)
    assert first.executed == set(api)
    image = first.outputs["17"][0]
    assert image.shape == (1, 64, 64, 3) and float(image.std()) > 0.01
    again = shared.run_prompt(copy.deepcopy(api))
    assert again.cached == set(api) and not again.executed
    fresh = new_session(root).run_prompt(copy.deepcopy(api))  # a new session: same bits
    assert torch.equal(fresh.outputs["17"][0], image)
    # the base's leftover noise reaches the refiner: a new base seed reruns both samplers
    other = shared.run_prompt(example_prompt(seed=5))
    assert {"10", "11", "17"} <= other.executed and "6" in other.cached
    assert not torch.equal(other.outputs["17"][0], image)


def test_sdxl_conditioning_keys_and_refiner_size_inputs(shared: Session) -> None:
    api = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xl.safetensors"}},
        "12": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xlr.safetensors"}},
        "1": {"class_type": "CLIPTextEncodeSDXL", "inputs": {
            "clip": ["4", 1], "width": 2048, "height": 1536, "crop_w": 16, "crop_h": 8, "target_width": 1024,
            "target_height": 768, "text_g": PROMPT, "text_l": "a glass bottle, " * 30}},
        "2": {"class_type": "CLIPTextEncodeSDXLRefiner", "inputs": {
            "ascore": 2.5, "width": 1024, "height": 1024, "text": "text, watermark", "clip": ["12", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
    }
    out = shared.run_prompt(api, targets=["1", "2", "3"]).outputs
    (cond, opts), = out["1"][0]
    assert cond.shape == (1, 154, 128)  # text_l needs 2 rows: text_g padded with an empty row; L + G channels
    assert {k: opts[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")} == {
        "width": 2048, "height": 1536, "crop_w": 16, "crop_h": 8, "target_width": 1024, "target_height": 768}
    assert opts["pooled_output"].shape == (1, 64)
    (rcond, ropts), = out["2"][0]
    assert rcond.shape == (1, 77, 64) and ropts["aesthetic_score"] == 2.5 and ropts["width"] == 1024
    (pcond, popts), = out["3"][0]
    assert pcond.shape == (1, 77, 128) and set(popts) == {"pooled_output"}  # sizes come from the latent
    torch.testing.assert_close(popts["pooled_output"], opts["pooled_output"])  # same text_g, same pooled


def test_lora_strengths_unload_reload(root: pathlib.Path) -> None:
    s = new_session(root)
    api = example_prompt()
    api["20"] = {"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": "xl_lora.safetensors", "strength_model": 0.0,
        "strength_clip": 0.0}}
    for n in ("6", "7"):
        api[n]["inputs"]["clip"] = ["20", 1]
    api["10"]["inputs"]["model"] = ["20", 0]
    plain = s.run_prompt(api).outputs["17"][0]
    reference = new_session(root).run_prompt(example_prompt()).outputs["17"][0]
    assert torch.equal(plain, reference)  # strength 0: the model itself
    api["20"]["inputs"].update(strength_model=1.0, strength_clip=1.0)
    strong = s.run_prompt(api)
    assert "20" in strong.executed and not torch.equal(strong.outputs["17"][0], plain)
    api["20"]["inputs"].update(strength_model=1.0, strength_clip=0.0)
    unet_only = s.run_prompt(api).outputs["17"][0]
    assert not torch.equal(unet_only, strong.outputs["17"][0]) and not torch.equal(unet_only, plain)
    s.models.unload_all()
    api["10"]["inputs"]["noise_seed"] = 11  # the samplers rerun on reloaded (and re-patched) weights
    reloaded = s.run_prompt(copy.deepcopy(api))
    assert {"10", "11", "17"} <= reloaded.executed and "20" in reloaded.cached
    fresh = new_session(root).run_prompt(copy.deepcopy(api))
    assert torch.equal(reloaded.outputs["17"][0], fresh.outputs["17"][0])


def test_lora_of_another_family_is_refused_naming_both(shared: Session) -> None:
    api = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd1.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": "xl_lora.safetensors",
                                                      "strength_model": 1.0, "strength_clip": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["2", 1]}},
    }
    with pytest.raises(NodeExecutionError, match=r"made for SDXL.*the model is Stable Diffusion 1\.x"):
        shared.run_prompt(api, targets=["3"])


def test_separate_files_equal_the_checkpoint(root: pathlib.Path) -> None:
    shared = new_session(root)
    api = example_prompt()
    base = shared.run_prompt(api).outputs["10"][0]["samples"]
    split = copy.deepcopy(api)
    split["30"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "xl_unet.safetensors", "weight_dtype": "default"}}
    split["31"] = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                              "clip_name2": "clip_g.safetensors", "type": "sdxl"}}
    split["32"] = {"class_type": "VAELoader", "inputs": {"vae_name": "xl_vae.safetensors"}}
    split["10"]["inputs"]["model"] = ["30", 0]
    split["6"]["inputs"]["clip"] = split["7"]["inputs"]["clip"] = ["31", 0]
    split["17"]["inputs"]["vae"] = ["32", 0]
    out = shared.run_prompt(split).outputs
    # identical weights (tests/families/test_family_loading.py); the OpenCLIP tower's fused q/k/v
    # slices and the separate q/k/v tensors sit at other addresses, which moves the last float bit
    # of the pooled output (~2e-7), amplified by CFG 8 over the steps
    torch.testing.assert_close(out["10"][0]["samples"], base, rtol=1e-4, atol=2e-3)
    bad = copy.deepcopy(split)
    bad["31"]["inputs"]["type"] = "flux"
    with pytest.raises(NodeExecutionError, match="supported combinations"):
        shared.run_prompt(bad)


def _sd2_prompt(ckpt: str, sampling: str | None = None) -> dict[str, Any]:
    model = ["1", 0]
    api: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    if sampling is not None:
        api["9"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": model, "sampling": sampling, "zsnr": False}}
        model = ["9", 0]
    api["5"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": 3, "steps": 3, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}}
    api["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}}
    return api


def test_sd2_v_prediction_is_detected_and_overridable(shared: Session) -> None:
    out = shared.run_prompt(_sd2_prompt("sd2v.safetensors"), targets=["1", "2", "5", "6"]).outputs
    model = out["1"][0]
    assert model.family.name == "sd2" and model.model_sampling.prediction == "v_prediction"
    eps_file = shared.run_prompt(_sd2_prompt("sd2.safetensors"), targets=["1", "6"]).outputs["1"][0]
    assert eps_file.model_sampling.prediction == "eps"
    forced_v = shared.run_prompt(_sd2_prompt("sd2v.safetensors", "v_prediction"), targets=["5"]).outputs["5"][0]["samples"]
    assert torch.equal(forced_v, out["5"][0]["samples"])  # what detection chose
    eps = shared.run_prompt(_sd2_prompt("sd2v.safetensors", "eps"), targets=["5"]).outputs["5"][0]["samples"]
    assert not torch.equal(eps, out["5"][0]["samples"])
    (cond, _), = out["2"][0]
    assert cond.shape == (1, 77, 64)
