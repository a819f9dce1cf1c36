"""SD 2.1 unCLIP end to end on tiny files with the released layout (OpenCLIP image tower under
``embedder.model.visual.``, ``noise_augmentor`` buffers, an SD2 UNet with a ``y`` input):
detection, the converted tower against ``transformers.CLIPVisionModelWithProjection``, the
``y`` input as ComfyUI's ``SD21UNCLIP.encode_adm`` builds it, and ComfyUI's unCLIP example
workflow (two images mixed by two chained unCLIPConditioning nodes) through ``run_prompt``."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import torch

from comfy_notebook._session import Session
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import make_checkpoint, make_masked_image

transformers = pytest.importorskip("transformers")
CKPT = "sd21-unclip-h.safetensors"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("unclip")
    make_checkpoint(base / "models" / "checkpoints" / CKPT, preset="sd2-unclip-v", seed=0)
    make_masked_image(base / "input" / "photo.png", seed=1)
    make_masked_image(base / "input" / "other.png", seed=2)
    return base


def _session(root: pathlib.Path) -> Session:
    s = Session(models_dir=root, output_dir=root / "output")
    register_builtins(s)
    return s


def test_detected_as_sd2_unclip(root: pathlib.Path) -> None:
    from comfy_notebook.families import SD2_UNCLIP, detect
    from comfy_notebook.runtime.loading import open_state_dict

    info = detect(open_state_dict(root / "models" / "checkpoints" / CKPT))
    assert info.family is SD2_UNCLIP and info.unet.adm_in_channels == 64
    assert set(info.components) == {"unet", "vae", "clip_h"}
    assert info.sampling.get("prediction") == "v_prediction"  # SD2's rule, as ComfyUI's SD21UnclipH


def test_tower_from_the_checkpoint_matches_transformers(root: pathlib.Path) -> None:
    from comfy_notebook.runtime.clip_vision import clip_preprocess, tower_state_dict
    from comfy_notebook.runtime.loading import open_state_dict

    s = _session(root)
    out = s.run_prompt({"1": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": CKPT}}},
                       targets=["1"]).outputs["1"]
    vision = out[3]
    sd = dict(tower_state_dict(open_state_dict(root / "models" / "checkpoints" / CKPT), "embedder.model.visual."))
    cfg = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=16, image_size=28, patch_size=7,
                                        projection_dim=32, hidden_act="quick_gelu")  # < 30 layers: ViT-L rule
    hf = transformers.CLIPVisionModelWithProjection(cfg).eval()
    missing, unexpected = hf.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    image = torch.rand(1, 40, 52, 3, generator=torch.Generator().manual_seed(0))
    got = vision.encode_image(image, crop=True)
    with torch.no_grad():
        ref = hf(pixel_values=clip_preprocess(image, 28, crop=True), output_hidden_states=True)
    torch.testing.assert_close(got.image_embeds, ref.image_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.last_hidden_state, ref.last_hidden_state, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.penultimate_hidden_states, ref.hidden_states[-2], rtol=0, atol=1e-5)


def test_y_input_is_comfyuis_encode_adm() -> None:
    from comfy_notebook.errors import NodeError
    from comfy_notebook.families import SD2_UNCLIP
    from comfy_notebook.models.noise_augment import unclip_adm
    from comfy_notebook.models.unet import UNetConfig

    config = UNetConfig(adm_in_channels=64)
    assert torch.equal(SD2_UNCLIP.model_inputs(config, {"seed": 4})["y"], torch.zeros(1, 64))
    embeds = torch.randn(1, 32, generator=torch.Generator().manual_seed(3))
    entry = {"clip_vision_output": {"image_embeds": embeds}, "strength": 0.8, "noise_augmentation": 0.3}
    y = SD2_UNCLIP.model_inputs(config, {"seed": 4, "unclip_conditioning": [entry]})["y"]
    torch.testing.assert_close(y, unclip_adm([entry], seed=4 - 10), rtol=0, atol=0)
    wrong = {**entry, "clip_vision_output": {"image_embeds": torch.zeros(1, 48)}}
    with pytest.raises(NodeError, match="32-wide image embeddings"):
        SD2_UNCLIP.model_inputs(config, {"seed": 4, "unclip_conditioning": [wrong]})


def workflow(strength2: float = 1.0, aug: float = 0.0) -> dict[str, Any]:
    """ComfyUI_examples/unclip: unCLIPCheckpointLoader, two LoadImage -> CLIPVisionEncode ->
    chained unCLIPConditioning, KSampler, VAEDecode, SaveImage (sizes and steps shrunk)."""
    return {
        "1": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "other.png"}},
        "6": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["1", 3], "image": ["4", 0], "crop": "center"}},
        "7": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["1", 3], "image": ["5", 0], "crop": "none"}},
        "8": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["2", 0], "clip_vision_output": ["6", 0],
                                                             "strength": 1.0, "noise_augmentation": aug}},
        "9": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["8", 0], "clip_vision_output": ["7", 0],
                                                             "strength": strength2, "noise_augmentation": aug}},
        "10": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "11": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 11, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["9", 0], "negative": ["3", 0], "latent_image": ["10", 0], "denoise": 1.0}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "unclip"}},
    }


def test_unclip_example_workflow(root: pathlib.Path) -> None:
    s = _session(root)
    result = s.run_prompt(workflow())
    assert {"1", "6", "7", "8", "9", "11", "12", "13"} <= set(result.outputs)
    cond = result.outputs["9"][0]
    entries = cond[0][1]["unclip_conditioning"]
    assert [e["strength"] for e in entries] == [1.0, 1.0] and len(entries) == 2
    image = result.outputs["12"][0]
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
    # deterministic: a fresh session gives the same image; the image embeddings steer it
    again = _session(root).run_prompt(workflow(), targets=["12"]).outputs["12"][0]
    assert torch.equal(image, again)
    fewer = s.run_prompt(workflow(strength2=0.0), targets=["12"]).outputs["12"][0]
    noisier = s.run_prompt(workflow(aug=0.5), targets=["12"]).outputs["12"][0]
    assert not torch.equal(image, fewer) and not torch.equal(image, noisier)


def test_plain_checkpoint_is_refused_with_a_fix(tmp_path: pathlib.Path) -> None:
    make_checkpoint(tmp_path / "models" / "checkpoints" / "sd2.safetensors", preset="sd2", seed=0)
    s = _session(tmp_path)
    with pytest.raises(Exception, match="CheckpointLoaderSimple"):
        s.run_prompt({"1": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": "sd2.safetensors"}}},
                     targets=["1"])


def test_sdxl_revision_replaces_the_pooled_text() -> None:
    """unCLIPConditioning on SDXL: y starts with the noised image embedding (seed - 10, no merge
    augmentation) cut to the pooled width, as ComfyUI's ``sdxl_pooled``; the size features follow."""
    from comfy_notebook.families import SDXL
    from comfy_notebook.families.sdxl import fourier_features
    from comfy_notebook.models.noise_augment import unclip_adm

    gen = torch.Generator().manual_seed(8)
    e1, e2 = torch.randn(1, 64, generator=gen), torch.randn(1, 64, generator=gen)
    entries = [{"clip_vision_output": {"image_embeds": e}, "strength": 1.0, "noise_augmentation": 0.2} for e in (e1, e2)]
    params = {"seed": 30, "width": 64, "height": 64, "pooled_output": torch.zeros(1, 64), "unclip_conditioning": entries}
    y = SDXL.model_inputs(None, params)["y"]
    want = unclip_adm(entries, seed=20, merge_augmentation=0.0)[:, :64]
    torch.testing.assert_close(y[:, :64], want, rtol=0, atol=0)
    torch.testing.assert_close(y[:, 64:], fourier_features([64.0, 64.0, 0.0, 0.0, 64.0, 64.0]), rtol=0, atol=0)
    plain = SDXL.model_inputs(None, {**params, "unclip_conditioning": None})["y"]
    assert torch.equal(plain[:, :64], torch.zeros(1, 64))


@pytest.mark.gpu
def test_unclip_on_cuda(root: pathlib.Path) -> None:
    """The tower, the augmentation and the y input on the device; the image stays close to the CPU's."""
    from comfy_notebook.runtime.devices import DevicePolicy
    from comfy_notebook.runtime.manager import ModelManager

    s = _session(root)
    s.services.models = ModelManager(DevicePolicy.cuda(0))
    image = s.run_prompt(workflow(), targets=["12"]).outputs["12"][0]
    cpu = _session(root).run_prompt(workflow(), targets=["12"]).outputs["12"][0]
    assert torch.isfinite(image).all() and (image - cpu).abs().max() <= 0.05
