"""The CLIP vision tower against ``transformers.CLIPVisionModelWithProjection`` on identical tiny
weights (fp32, max |d| <= 1e-5), for the quick-GELU (ViT-L) and GELU (ViT-H / bigG) variants;
ComfyUI's preprocessing; CLIPVisionLoader / CLIPVisionEncode through ``run_prompt``."""

from __future__ import annotations

import pathlib

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from comfy_notebook.models.clip_vision import CLIPVisionConfig, CLIPVisionModel
from comfy_notebook.runtime.clip_vision import CLIP_MEAN, CLIP_STD, clip_preprocess

transformers = pytest.importorskip("transformers")


def _hf(layers: int, act: str, seed: int = 0) -> object:
    cfg = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                        num_attention_heads=16, image_size=28, patch_size=7,
                                        projection_dim=32, hidden_act=act)
    torch.manual_seed(seed)
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():  # non-trivial norms and class token
        for name, p in model.named_parameters():
            if "norm" in name or "class_embedding" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _ours(hf: object) -> CLIPVisionModel:
    sd = {k: v for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    config = CLIPVisionConfig.from_state_dict(sd)
    model = CLIPVisionModel(config).eval()
    model.load_state_dict(sd, strict=True)
    return model


@pytest.mark.parametrize(("layers", "act"), [(3, "quick_gelu"), (2, "quick_gelu")])
def test_tower_matches_transformers(layers: int, act: str) -> None:
    hf = _hf(layers, act)
    ours = _ours(hf)
    assert ours.config.activation == act and ours.config.image_size == 28 and ours.config.heads == 16
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True)
        out = ours(pixels)
    torch.testing.assert_close(out.image_embeds, ref.image_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.penultimate_hidden_states, ref.hidden_states[-2], rtol=0, atol=1e-5)


def test_gelu_variant_matches_transformers() -> None:
    """Towers of 30+ layers (ViT-H, bigG) use GELU: checked on a 30-layer tiny tower."""
    hf = _hf(30, "gelu", seed=2)
    ours = _ours(hf)
    assert ours.config.activation == "gelu"
    pixels = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True)
        out = ours(pixels)
    torch.testing.assert_close(out.image_embeds, ref.image_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.penultimate_hidden_states, ref.hidden_states[-2], rtol=0, atol=1e-5)


def test_preprocess_is_comfyuis() -> None:
    image = torch.rand(1, 40, 60, 3, generator=torch.Generator().manual_seed(4))
    got = clip_preprocess(image, 28, crop=True)
    x = F.interpolate(image.movedim(-1, 1), size=(28, 42), mode="bicubic", antialias=True)[:, :, :, 7:35]
    x = torch.clip(255.0 * x, 0, 255).round() / 255.0
    ref = (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    squashed = clip_preprocess(image, 28, crop=False)
    assert squashed.shape == (1, 3, 28, 28) and not torch.equal(squashed, got)


def test_nodes_through_run_prompt(tmp_path: pathlib.Path) -> None:
    from comfy_notebook._session import Session
    from comfy_notebook.nodes import register_builtins

    hf = _hf(3, "quick_gelu", seed=5)
    folder = tmp_path / "models" / "clip_vision"
    folder.mkdir(parents=True)
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    save_file(sd, str(folder / "tiny_vision.safetensors"))
    (tmp_path / "input").mkdir()
    s = Session(models_dir=tmp_path, output_dir=tmp_path / "output")
    register_builtins(s)
    api = {"1": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "tiny_vision.safetensors"}},
           "2": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 32, "batch_size": 1, "color": 0x336699}},
           "3": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["1", 0], "image": ["2", 0], "crop": "center"}}}
    out = s.run_prompt(api, targets=["3"]).outputs["3"][0]
    image = s.run_prompt(api, targets=["2"]).outputs["2"][0]
    with torch.no_grad():
        ref = hf(pixel_values=clip_preprocess(image, 28, crop=True), output_hidden_states=True)
    torch.testing.assert_close(out["image_embeds"], ref.image_embeds, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.penultimate_hidden_states, ref.hidden_states[-2], rtol=0, atol=1e-5)
    assert "CLIP_VISION_OUTPUT" in repr(out)


def test_unclip_conditioning_appends_per_entry() -> None:
    from comfy_notebook.nodes.clip_vision import unCLIPConditioning

    cond = [[torch.zeros(1, 77, 8), {"pooled_output": None}],
            [torch.ones(1, 77, 8), {"unclip_conditioning": [{"strength": 0.3}]}]]
    marker = object()
    (out,) = unCLIPConditioning().apply_adm(cond, marker, 0.8, 0.1)
    assert out[0][1]["unclip_conditioning"] == [{"clip_vision_output": marker, "strength": 0.8,
                                                 "noise_augmentation": 0.1}]
    assert len(out[1][1]["unclip_conditioning"]) == 2 and len(cond[1][1]["unclip_conditioning"]) == 1
    assert unCLIPConditioning().apply_adm(cond, marker, 0.0, 0.1)[0] is cond


def test_every_hidden_layer_matches_transformers() -> None:
    hf = _hf(3, "quick_gelu", seed=6)
    ours = _ours(hf)
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True).hidden_states  # input + each layer
        vm = ours.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixels))
        torch.testing.assert_close(x, ref[0], rtol=0, atol=1e-5)
        for i, layer in enumerate(vm.encoder.layers):
            x = layer(x)
            torch.testing.assert_close(x, ref[i + 1], rtol=0, atol=1e-5)


# (width, layers, intermediate, projection) of the released towers (ComfyUI's clip_vision_config_*.json)
SIZES = {"vit-l": (1024, 24, 4096, 768), "vit-h": (1280, 32, 5120, 1024), "vit-g": (1664, 48, 8192, 1280)}


@pytest.mark.parametrize("size", sorted(SIZES))
def test_real_sizes_match_transformers(size: str) -> None:
    width, layers, inter, proj = SIZES[size]
    cfg = transformers.CLIPVisionConfig(hidden_size=width, intermediate_size=inter, num_hidden_layers=layers,
                                        num_attention_heads=16, image_size=224, patch_size=14, projection_dim=proj,
                                        hidden_act="quick_gelu" if layers < 30 else "gelu")
    with torch.device("meta"):
        hf = transformers.CLIPVisionModelWithProjection(cfg)
    sd = {k: v for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    config = CLIPVisionConfig.from_state_dict(sd)  # sizes read from shapes alone
    assert (config.width, config.layers, config.intermediate, config.projection_dim, config.image_size) == \
        (width, layers, inter, proj, 224)
    assert config.activation == cfg.hidden_act
    with torch.device("meta"):
        ours = CLIPVisionModel(config)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in sd.items()}
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in hf.parameters())
    assert n_ours == {"vit-l": 303_966_208, "vit-h": 632_076_800, "vit-g": 1_844_907_264}[size]
