"""Flux ControlNets against diffusers (0.42.1) on tiny configs, fp32, max |delta| <= 1e-5.

- InstantX / union / AliMama-inpainting files (diffusers ``FluxControlNetModel`` layout, written by
  ``make_flux_controlnet``) load *unchanged* into diffusers' ``FluxControlNetModel`` and, through
  our reader, into :class:`FluxControlNet`; the per-block samples agree.
- XLabs files: diffusers' ``FluxControlNetModel(conditioning_embedding_channels=16)`` has the same
  hint encoder (8 convs, 3 of stride 2); the file's tensors renamed to it give the same samples
  for the same image mapped to -1..1 (ComfyUI's ``hint * 2 - 1``).
- The Flux transformer with residuals against ``FluxTransformer2DModel(controlnet_block_samples=...,
  controlnet_single_block_samples=..., controlnet_blocks_repeat=...)``: blockwise (InstantX) and
  cyclic (XLabs) repetition over a main model deeper than the ControlNet.
"""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
import torch
from safetensors.torch import load_file

from comfy_notebook.families.control import describe_control, read_family_control
from comfy_notebook.families.flux_control import flux_control_to_diffusers
from comfy_notebook.models.controlnet_flux import FluxControlNet, expand_residuals
from comfy_notebook.models.flux import FluxConfig, rope_axes
from comfy_notebook.runtime.control_files import read_control_file
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.testing import make_flux_controlnet
from tests.models.test_flux import _pack, _pair, _unpack

TOL = 1e-5
CN = dataclasses.replace(FluxConfig.tiny(), depth=2, depth_single_blocks=2)


def _ours(path: str) -> FluxControlNet:
    kind, tensors = read_control_file(open_state_dict(path), path, read_family_control)
    assert kind == "dit_controlnet"
    family, config = describe_control(kind, tensors)
    assert family == "flux"
    net = FluxControlNet(config).eval()
    net.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return net


def _diffusers(num_mode: int | None = None, hint: bool = False, latent_channels: int = 16):
    from diffusers import FluxControlNetModel

    ref = FluxControlNetModel(
        patch_size=1, in_channels=64, num_layers=CN.depth, num_single_layers=CN.depth_single_blocks,
        attention_head_dim=32, num_attention_heads=2, joint_attention_dim=CN.context_in_dim,
        pooled_projection_dim=CN.vec_in_dim, guidance_embeds=True, axes_dims_rope=list(rope_axes(32)),
        num_mode=num_mode, conditioning_embedding_channels=16 if hint else None)
    if latent_channels != 16:  # AliMama: diffusers' extra_condition_channels widen controlnet_x_embedder
        ref.controlnet_x_embedder = torch.nn.Linear(latent_channels * 4, ref.inner_dim)
    return ref.eval()


def _inputs(b: int = 2, h: int = 8, w: int = 6, latent_channels: int = 16):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(b, 16, h, w, generator=gen)
    hint = torch.randn(b, latent_channels, h, w, generator=gen)
    ctx = torch.randn(b, 5, CN.context_in_dim, generator=gen)
    y = torch.randn(b, CN.vec_in_dim, generator=gen)
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return x, hint, ctx, y, torch.tensor([0.8, 0.3]), torch.tensor([3.5, 1.5]), ids.view(-1, 3)


def _max(a, b) -> float:
    assert len(a) == len(b)
    return max((p - q).abs().max().item() for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("kind", ["instantx", "union", "inpaint"])
def test_instantx_layout_matches_diffusers_flux_controlnet(tmp_path: pathlib.Path, kind: str) -> None:
    path = make_flux_controlnet(tmp_path / f"{kind}.safetensors", kind, seed=5, dtype=torch.float32, config=CN)
    channels = 17 if kind == "inpaint" else 16
    ref = _diffusers(num_mode=7 if kind == "union" else None, latent_channels=channels)
    ref.load_state_dict(load_file(path), strict=True)  # the file is diffusers' own layout
    ours = _ours(path)
    x, hint, ctx, y, t, g, ids = _inputs(latent_channels=channels)
    mode = [4] if kind == "union" else []
    with torch.no_grad():
        res = ours(x, hint, t, ctx, y, g, control_type=mode, slots=(CN.depth, CN.depth_single_blocks))
        double, single = ref(hidden_states=_pack(x), controlnet_cond=_pack(hint),
                             controlnet_mode=torch.tensor([mode] * 2) if mode else None,
                             encoder_hidden_states=ctx, pooled_projections=y, timestep=t, img_ids=ids,
                             txt_ids=torch.zeros(5, 3), guidance=g, return_dict=False)
    assert res.input[0].abs().mean() > 1e-2
    assert _max(res.input, double) <= TOL and _max(res.output, single) <= TOL


def test_union_mode_changes_the_samples(tmp_path: pathlib.Path) -> None:
    ours = _ours(make_flux_controlnet(tmp_path / "u.safetensors", "union", dtype=torch.float32, config=CN))
    x, hint, ctx, y, t, g, _ = _inputs()
    with torch.no_grad():
        a = ours(x, hint, t, ctx, y, g, control_type=[0]).input[0]
        b = ours(x, hint, t, ctx, y, g, control_type=[1]).input[0]
        auto = ours(x, hint, t, ctx, y, g).input[0]
    assert (a - b).abs().max() > 1e-3 and (a - auto).abs().max() > 1e-3
    with pytest.raises(ValueError, match="knows 7 modes"):
        ours(x, hint, t, ctx, y, g, control_type=[7])


def _xlabs_to_diffusers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    hint = {f"input_hint_block.{2 * i}.": f"input_hint_block.{name}." for i, name in enumerate(
        ["conv_in", *(f"blocks.{k}" for k in range(6)), "conv_out"])}
    backbone = {k: v for k, v in tensors.items() if not k.startswith("input_hint_block.")}
    out = flux_control_to_diffusers(backbone)
    for k, v in tensors.items():
        for old, new in hint.items():
            if k.startswith(old):
                out[new + k[len(old):]] = v
    return out


def test_xlabs_layout_matches_diffusers_with_a_hint_encoder(tmp_path: pathlib.Path) -> None:
    cfg = dataclasses.replace(CN, depth_single_blocks=0)
    path = make_flux_controlnet(tmp_path / "xlabs.safetensors", "xlabs", seed=2, dtype=torch.float32, config=cfg)
    ours = _ours(path)
    assert ours.control_config.kind == "xlabs" and not ours.control_config.latent_input
    from diffusers import FluxControlNetModel

    ref = FluxControlNetModel(
        patch_size=2, in_channels=64, num_layers=cfg.depth, num_single_layers=0, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=cfg.context_in_dim, pooled_projection_dim=cfg.vec_in_dim,
        guidance_embeds=True, axes_dims_rope=list(rope_axes(32)), conditioning_embedding_channels=16).eval()
    ref.load_state_dict(_xlabs_to_diffusers(load_file(path)), strict=True)
    x, _, ctx, y, t, g, ids = _inputs()
    image = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(9))  # 0..1, 8x the latent
    with torch.no_grad():
        res = ours(x, image, t, ctx, y, g, slots=(5, 0))
        double, _ = ref(hidden_states=_pack(x), controlnet_cond=image * 2.0 - 1.0, encoder_hidden_states=ctx,
                        pooled_projections=y, timestep=t, img_ids=ids, txt_ids=torch.zeros(5, 3), guidance=g,
                        return_dict=False)
    assert len(res.input) == 5 and res.output == ()
    assert res.input[2] is res.input[0] and res.input[3] is res.input[1]  # cyclic, shared
    assert _max(res.input[:2], double) <= TOL


def test_expand_residuals_repeats_as_comfyui() -> None:
    a, b = torch.zeros(1), torch.ones(1)
    assert [x.item() for x in expand_residuals([a, b], 5, cyclic=True)] == [0, 1, 0, 1, 0]
    assert [x.item() for x in expand_residuals([a, b], 5, cyclic=False)] == [0, 0, 0, 1, 1]
    # Flux.1 with InstantX Union Pro's 5 double / 10 single blocks: 4 and 4 slots per sample
    five = [torch.full((1,), float(i)) for i in range(5)]
    assert [int(x.item()) for x in expand_residuals(five, 19, cyclic=False)] == [i // 4 for i in range(19)]


@pytest.mark.parametrize("cyclic", [False, True], ids=["blockwise", "cyclic"])
def test_flux_transformer_residuals_match_diffusers(cyclic: bool) -> None:
    main = dataclasses.replace(FluxConfig.tiny(), depth=3, depth_single_blocks=4)
    ours, ref, _ = _pair(main)
    gen = torch.Generator().manual_seed(4)
    b, h, w = 2, 6, 8
    x = torch.randn(b, 16, h, w, generator=gen)
    ctx = torch.randn(b, 7, main.context_in_dim, generator=gen)
    y = torch.randn(b, main.vec_in_dim, generator=gen)
    t, g = torch.tensor([0.9, 0.35]), torch.tensor([3.5, 1.0])
    tokens = (h // 2) * (w // 2)
    double = [torch.randn(b, tokens, main.hidden_size, generator=gen) for _ in range(2)]
    single = [] if cyclic else [torch.randn(b, tokens, main.hidden_size, generator=gen) for _ in range(3)]
    from comfy_notebook.models.unet import ControlResiduals

    control = ControlResiduals(input=expand_residuals(double, main.depth, cyclic),
                               output=expand_residuals(single, main.depth_single_blocks, cyclic))
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    with torch.no_grad():
        out = ours(x, t, ctx, y, g, control=control)
        plain = ours(x, t, ctx, y, g)
        ref_out = ref(hidden_states=_pack(x), encoder_hidden_states=ctx, pooled_projections=y, timestep=t,
                      img_ids=ids.view(-1, 3), txt_ids=torch.zeros(7, 3), guidance=g,
                      controlnet_block_samples=double, controlnet_single_block_samples=single or None,
                      controlnet_blocks_repeat=cyclic).sample
    assert (out - plain).abs().max() > 1e-2  # the residuals matter
    assert (out - _unpack(ref_out, h, w)).abs().max().item() <= TOL


@pytest.mark.parametrize(("layers", "single", "modes"), [(5, 10, 10), (4, 10, None), (2, 0, None)],
                         ids=["union-pro", "instantx-canny", "xlabs-depth"])
def test_real_size_parameter_counts_match_diffusers(layers: int, single: int, modes: int | None) -> None:
    """Released sizes (Shakker Union Pro: 5 + 10 blocks, 10 modes; InstantX canny: 4 + 10; XLabs
    v3: 2 double blocks) built on meta: our net and diffusers' have the same parameter count."""
    from diffusers import FluxControlNetModel

    from comfy_notebook.models.controlnet_flux import FluxControlNetConfig

    flux = dataclasses.replace(FluxConfig.dev(), depth=layers, depth_single_blocks=single)
    xlabs = single == 0  # with its pixel hint encoder (diffusers: conditioning_embedding_channels=16)
    with torch.device("meta"):
        ours = FluxControlNet(FluxControlNetConfig(flux=flux, kind="xlabs" if xlabs else "instantx",
                                                   union_modes=modes or 0))
        ref = FluxControlNetModel(num_layers=layers, num_single_layers=single, guidance_embeds=True, num_mode=modes,
                                  conditioning_embedding_channels=16 if xlabs else None)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in ref.parameters())
    assert count > 1_000_000_000 if layers >= 4 else count > 700_000_000
