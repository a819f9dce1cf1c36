"""Reading Flux ControlNet files (families/flux_control.py): layouts, names, and the DiT nets refused."""

from __future__ import annotations

import pathlib

import pytest
import torch

from comfy_notebook.errors import UnsupportedModelError
from comfy_notebook.families.control import describe_control, read_family_control
from comfy_notebook.families.flux_control import flux_control_to_diffusers, read_flux_control
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.testing import FLUX_CONTROLNET_KINDS, make_flux_controlnet


@pytest.mark.parametrize("kind", FLUX_CONTROLNET_KINDS)
def test_each_layout_is_read_with_its_sizes(tmp_path: pathlib.Path, kind: str) -> None:
    sd = open_state_dict(make_flux_controlnet(tmp_path / "c.safetensors", kind))
    found = read_family_control(sd)
    assert found is not None and found[0] == "dit_controlnet"
    family, config = describe_control(*found)
    assert family == "flux"
    assert config.kind == {"union": "instantx", "inpaint": "instantx"}.get(kind, kind)
    assert config.latent_channels == (17 if kind == "inpaint" else 16)
    assert config.union_modes == (7 if kind == "union" else 0)
    assert config.concat_mask == (kind == "inpaint")
    assert (config.latent_format is not None) == config.latent_input  # latent nets get Flux's latent format
    assert config.flux.depth == 1 and config.flux.depth_single_blocks == (0 if kind == "xlabs" else 1)
    assert config.context_dim == 32
    names = set(found[1])
    assert "img_in.weight" in names and "double_blocks.0.img_attn.qkv.weight" in names
    if kind == "mistoline":
        assert "controlnet_single_blocks.0.linear.weight" in names and "input_cond_block.encoder.0.weight" in names
    if kind in ("instantx", "union", "inpaint"):
        assert "pos_embed_input.weight" in names and not any(k.startswith("transformer_blocks.") for k in names)


def test_diffusers_names_round_trip(tmp_path: pathlib.Path) -> None:
    sd = dict(open_state_dict(make_flux_controlnet(tmp_path / "c.safetensors", "union", dtype=torch.float32)))
    _, ours = read_flux_control(sd)
    back = flux_control_to_diffusers(ours)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize(("key", "what"), [
    ("after_proj_list.18.bias", "HunyuanDiT"), ("pos_embed_input.proj.weight", "SD3"),
    ("transformer_blocks.0.img_mlp.net.0.proj.weight", "Qwen-Image")])
def test_other_dit_controlnets_are_refused_by_name(key: str, what: str) -> None:
    sd = {"controlnet_blocks.0.weight": torch.zeros(2, 2), key: torch.zeros(2)}
    with pytest.raises(UnsupportedModelError, match=what) as info:
        read_family_control(sd)
    assert "not supported yet" in str(info.value) and "Fix:" in str(info.value)


def test_unet_controlnets_are_left_to_the_runtime_reader() -> None:
    assert read_family_control({"control_model.zero_convs.0.0.weight": torch.zeros(1)}) is None


def test_hint_encoders_have_comfyuis_shapes(tmp_path: pathlib.Path) -> None:
    """Conv shapes as ComfyUI's ControlNetFlux builds them (comfy/ldm/flux/controlnet.py at a125cd8):
    XLabs 8 convs (3x3; strides 2 at 3rd, 5th, 7th), Mistoline 10 (1x1 at 2nd and 9th); both bring
    a 0..1 image at 8x the latent to the latent's token grid."""
    from comfy_notebook.runtime.control_files import _build

    xlabs = {f"input_hint_block.{2 * i}.weight": (16, 3 if i == 0 else 16, 3, 3) for i in range(8)}
    misto = {f"input_cond_block.encoder.{2 * i}.weight": (16, 3 if i == 0 else 16, *((1, 1) if i in (1, 8) else (3, 3)))
             for i in range(10)}
    for kind, want in (("xlabs", xlabs), ("mistoline", misto)):
        found = read_flux_control(open_state_dict(make_flux_controlnet(tmp_path / f"{kind}.safetensors", kind)))
        assert found is not None
        got = {k: tuple(v.shape) for k, v in found[1].items() if k.startswith(("input_hint_block.", "input_cond_block."))
               and k.endswith(".weight")}
        assert got == want
        _, config = describe_control(*found)
        net = _build(*found, config, torch.float32)
        with torch.no_grad():
            res = net(torch.randn(1, 16, 8, 6), torch.rand(1, 3, 64, 48), torch.tensor([0.5]),
                      torch.randn(1, 3, 32), slots=(2, 2))
        assert res.input[0].shape == (1, 12, 64)  # (8/2) x (6/2) tokens
