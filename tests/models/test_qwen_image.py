"""Qwen-Image transformer vs diffusers' QwenImageTransformer2DModel on identical weights."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.models.qwen_image import (
    QwenImage,
    QwenImageConfig,
    qwen_rope_axes,
    reference_ids,
    reference_kwargs,
)
from comfy_notebook.testing import random_qwen_image_state_dict

diffusers = pytest.importorskip("diffusers")


def _ours(config: QwenImageConfig, seed: int = 0) -> tuple[QwenImage, dict]:
    with torch.device("meta"):
        model = QwenImage(config)
    sd = random_qwen_image_state_dict(config, seed)
    model.load_state_dict(sd, assign=True, strict=True)
    return model.eval(), sd


def _reference(config: QwenImageConfig, sd: dict):
    ref = diffusers.QwenImageTransformer2DModel(
        patch_size=config.patch_size, in_channels=config.patch_features, out_channels=config.out_channels,
        num_layers=config.num_layers, attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads, joint_attention_dim=config.context_dim,
        axes_dims_rope=config.axes_dim, zero_cond_t=config.zero_cond_t)
    # diffusers' single-file loader maps the released keys onto this model unchanged
    mapping = diffusers.loaders.single_file_model.SINGLE_FILE_LOADABLE_CLASSES[
        "QwenImageTransformer2DModel"]["checkpoint_mapping_fn"]
    missing, unexpected = ref.load_state_dict(mapping({k: v.clone() for k, v in sd.items()}), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ref.eval()


def _pack(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(t: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    b = t.shape[0]
    return t.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@pytest.mark.parametrize(("h", "w", "n_txt"), [(8, 8, 7), (12, 8, 20), (8, 16, 5)])
def test_forward_equals_diffusers(h: int, w: int, n_txt: int) -> None:
    config = QwenImageConfig.tiny()
    ours, sd = _ours(config)
    ref = _reference(config, sd)
    g = torch.Generator().manual_seed(1)
    c = config.in_channels
    x = torch.randn(2, c, h, w, generator=g)
    t = torch.tensor([0.3, 0.9])
    ctx = torch.randn(2, n_txt, config.context_dim, generator=g)
    with torch.no_grad():
        got = ours(x, t, ctx)
        want = ref(_pack(x), ctx, None, t, img_shapes=[[(1, h // 2, w // 2)]] * 2, return_dict=False)[0]
    assert got.shape == x.shape
    assert (got - _unpack(want, c, h, w)).abs().max() <= 1e-5


@pytest.mark.parametrize("ref_sizes", [[(8, 8)], [(4, 8), (8, 4)]])
def test_reference_latents_equal_diffusers_edit(ref_sizes: list[tuple[int, int]]) -> None:
    """Edit: reference latents appended to the image tokens at frames 1, 2, ... (ComfyUI's
    "index" method, diffusers' Edit pipeline).  The references are no larger than the latent and
    cut into even patch grids: diffusers starts the text positions after the largest grid and
    centres odd grids one row lower than ComfyUI, whose positions this model follows."""
    config = QwenImageConfig.tiny()
    ours, sd = _ours(config, seed=3)
    ref = _reference(config, sd)
    g = torch.Generator().manual_seed(2)
    c, h, w = config.in_channels, 8, 8
    x = torch.randn(1, c, h, w, generator=g)
    refs = [torch.randn(1, c, rh, rw, generator=g) for rh, rw in ref_sizes]
    t = torch.tensor([0.55])
    ctx = torch.randn(1, 9, config.context_dim, generator=g)
    shapes = [(1, h // 2, w // 2)] + [(1, rh // 2, rw // 2) for rh, rw in ref_sizes]
    with torch.no_grad():
        got = ours(x, t, ctx, ref_latents=refs)
        tokens = torch.cat([_pack(x)] + [_pack(r) for r in refs], dim=1)
        want = ref(tokens, ctx, None, t, img_shapes=[shapes], return_dict=False)[0][:, : (h // 2) * (w // 2)]
        plain = ours(x, t, ctx)
        named = ours(x, t, ctx, **reference_kwargs(refs))  # as the sampler passes them
    assert torch.equal(named, got)
    assert (got - _unpack(want, c, h, w)).abs().max() <= 1e-5
    assert (got - plain).abs().max() > 1e-3  # the references do change the prediction


def test_edit_2511_zero_cond_t_equals_diffusers(tmp_path) -> None:
    """Edit-2511: the file's ``__index_timestep_zero__`` marker turns on ``zero_cond_t`` (reference
    tokens modulated at timestep 0), as diffusers' ``zero_cond_t=True``; the marker is no parameter."""
    from comfy_notebook.runtime.loading import open_state_dict
    from comfy_notebook.runtime.module_loading import load_module
    from comfy_notebook.testing import make_qwen_image_file

    path = make_qwen_image_file(tmp_path / "qwen_image_edit_2511.safetensors", "qwen-image-edit-2511-tiny",
                                dtype=torch.float32)
    sd = open_state_dict(path)
    config = QwenImageConfig.from_state_dict(sd)
    assert config.zero_cond_t and "__index_timestep_zero__" in sd
    ours = load_module(QwenImage, config, sd, ignore=QwenImage.ignored_keys)
    ref = _reference(config, {k: v for k, v in sd.items() if k != "__index_timestep_zero__"})
    g = torch.Generator().manual_seed(6)
    c, h, w = config.in_channels, 8, 8
    x, r = torch.randn(2, c, h, w, generator=g), torch.randn(2, c, 8, 4, generator=g)
    t, ctx = torch.tensor([0.6, 0.2]), torch.randn(2, 7, config.context_dim, generator=g)
    with torch.no_grad():
        got = ours(x, t, ctx, ref_latents=[r])
        want = ref(torch.cat([_pack(x), _pack(r)], dim=1), ctx, None, t,
                   img_shapes=[[(1, h // 2, w // 2), (1, 4, 2)]] * 2, return_dict=False)[0][:, : (h // 2) * (w // 2)]
        plain = ours(x, t, ctx)  # without references nothing differs from Qwen-Image
        plain_ref = ref(_pack(x), ctx, None, t, img_shapes=[[(1, h // 2, w // 2)]] * 2, return_dict=False)[0]
    assert (got - _unpack(want, c, h, w)).abs().max() <= 1e-5
    assert (plain - _unpack(plain_ref, c, h, w)).abs().max() <= 1e-5


def test_five_dim_latent_and_odd_sizes() -> None:
    """ComfyUI's [B, C, 1, H, W] latents round-trip; odd sizes are padded and cropped back."""
    config = QwenImageConfig.tiny()
    ours, _ = _ours(config)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, config.in_channels, 7, 9, generator=g)
    ctx = torch.randn(1, 4, config.context_dim, generator=g)
    t = torch.tensor([0.5])
    with torch.no_grad():
        flat = ours(x, t, ctx)
        five = ours(x[:, :, None], t, ctx)
    assert flat.shape == x.shape and five.shape == (1, config.in_channels, 1, 7, 9)
    assert torch.equal(five[:, :, 0], flat)


def test_reference_ids_methods() -> None:
    """"index": frame k, centred; "offset": frame 1, each reference beside the previous ones."""
    a, b = reference_ids([(8, 8), (8, 4)], "index")
    assert a[:, 0].unique().tolist() == [1.0] and b[:, 0].unique().tolist() == [2.0]
    assert a[:, 1].min() == -2 and a[:, 1].max() == 1
    a, b = reference_ids([(8, 8), (8, 4)], "offset")
    assert a[:, 0].unique().tolist() == b[:, 0].unique().tolist() == [1.0]
    # the tall second one (8x4 latent) goes right of the first: columns offset by 8 latent
    # pixels = 4 patches (then centred on its own 2-patch width), rows as without offset
    assert b[:, 2].min() == 4 - 1 and b[:, 1].min() == -2
    _, c = reference_ids([(8, 8), (4, 8)], "offset")  # a wide one goes below
    assert c[:, 1].min() == 4 - 1 and c[:, 2].min() == -2
    with pytest.raises(ValueError, match="expected one of"):
        reference_ids([(8, 8)], "uxo")
    # keyword inputs: ComfyUI places every method but "index" as "offset"
    refs = [torch.zeros(1, 16, 8, 8), torch.ones(1, 16, 4, 8)]
    assert list(reference_kwargs(refs, "uxo")) == ["ref_latent_offset_0", "ref_latent_offset_1"]
    assert list(reference_kwargs(refs)) == ["ref_latent_index_0", "ref_latent_index_1"]


def test_config_from_state_dict_and_real_size() -> None:
    config = QwenImageConfig.tiny()
    _, sd = _ours(config)
    assert QwenImageConfig.from_state_dict(sd) == config
    prefixed = {"model.diffusion_model." + k: v for k, v in sd.items()}
    assert QwenImageConfig.from_state_dict(prefixed, "model.diffusion_model.") == config
    assert qwen_rope_axes(128) == (16, 56, 56)
    with torch.device("meta"):
        full = QwenImage(QwenImageConfig.qwen_image())
        ref = diffusers.QwenImageTransformer2DModel()
    n_ours = sum(p.numel() for p in full.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())
    assert n_ours == n_ref == 20_430_401_088, (n_ours, n_ref)
    assert set(full.state_dict()) == set(ref.state_dict())


@pytest.mark.gpu
def test_bf16_on_cuda_is_as_close_to_float32_as_diffusers():
    """On the GPU in bf16 (the released models' dtype) our transformer stays as close to the
    float32 result as diffusers' does on the same weights."""
    config = QwenImageConfig.tiny()
    ours, sd = _ours(config)
    ref = _reference(config, sd)
    g = torch.Generator().manual_seed(5)
    x, ctx = torch.randn(1, config.in_channels, 16, 16, generator=g), torch.randn(1, 12, config.context_dim, generator=g)
    t = torch.tensor([0.4])
    with torch.no_grad():
        exact = ours(x, t, ctx)
        ours_bf16 = ours.to("cuda", torch.bfloat16)
        ref_bf16 = ref.to("cuda", torch.bfloat16)
        a = ours_bf16(x.cuda().bfloat16(), t.cuda(), ctx.cuda().bfloat16()).float().cpu()
        b = ref_bf16(_pack(x).cuda().bfloat16(), ctx.cuda().bfloat16(), None, t.cuda(),
                     img_shapes=[[(1, 8, 8)]], return_dict=False)[0].float().cpu()
    err_ours = ((a - exact).norm() / exact.norm()).item()
    err_ref = ((_unpack(b, config.in_channels, 16, 16) - exact).norm() / exact.norm()).item()
    assert err_ours <= 1.5 * err_ref + 1e-3, (err_ours, err_ref)
