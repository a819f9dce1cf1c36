"""ComfyUI's "scaled fp8" files (``scaled_fp8`` marker, per-layer ``scale_weight`` / ``scale_input``).

As ComfyUI a125cd8 (``comfy/model_detection.py``: the marker's dtype is the weights' fp8 dtype,
float32 meaning e4m3fn, two elements meaning no fp8 matmul; ``comfy/ops.py scaled_fp8_ops``: linear
weight (and bias) kept in fp8, the float32 scale applied per call to the smaller of weight and
input; other tensors in the compute dtype), for Flux (diffusion model) and T5 (text encoder).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from comfy_notebook.families.flux import load_t5
from comfy_notebook.models.flux import Flux, FluxConfig
from comfy_notebook.models.t5 import T5Config, T5Encoder
from comfy_notebook.runtime.fp8 import ScaledFP8Linear, scaled_linear_factory
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.runtime.module_loading import load_module_file
from comfy_notebook.testing import make_flux_file, make_t5_file

_CFG = dataclasses.replace(FluxConfig.tiny(), hidden_size=128, num_heads=2, axes_dim=(8, 28, 28),
                           context_in_dim=64, vec_in_dim=32)


def _linear_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _scale_file(src: str, dst, linears: set[str], *, marker_elems: int = 0, with_input: bool = False) -> dict:
    """A scaled-fp8 copy of ``src``: linear weights as e4m3fn of w / (max|w| / 448), scales in float32."""
    raw = open_state_dict(src)
    out: dict[str, torch.Tensor] = {}
    for k in raw:
        t = raw[k].float()
        mod, _, leaf = k.rpartition(".")
        if mod in linears and leaf == "weight":
            scale = t.abs().max() / 448.0
            out[k] = (t / scale).to(torch.float8_e4m3fn)
            out[f"{mod}.scale_weight"] = scale.reshape(()).float()
            if with_input:
                out[f"{mod}.scale_input"] = torch.tensor(1.0)
        else:
            out[k] = raw[k]
    out["scaled_fp8"] = torch.empty(marker_elems, dtype=torch.float8_e4m3fn)
    save_file(out, str(dst))
    return out


def _inputs(cfg: FluxConfig):
    gen = torch.Generator().manual_seed(3)
    return (torch.randn(1, 16, 8, 8, generator=gen), torch.tensor([0.7]),
            torch.randn(1, 5, cfg.context_in_dim, generator=gen), torch.randn(1, cfg.vec_in_dim, generator=gen),
            torch.tensor([3.5]))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_layer_scales_the_smaller_operand_as_comfyui():
    gen = torch.Generator().manual_seed(0)
    layer = ScaledFP8Linear(32, 16)
    w = (torch.randn(16, 32, generator=gen) * 4).to(torch.float8_e4m3fn)
    layer.weight = nn.Parameter(w, requires_grad=False)
    layer.bias = nn.Parameter(torch.randn(16, generator=gen).to(torch.float8_e4m3fn), requires_grad=False)
    layer.scale_weight.fill_(0.01)
    small, big = torch.randn(2, 32, generator=gen), torch.randn(40, 32, generator=gen)  # 64 < 512 < 1280
    with torch.no_grad():
        for x in (small, big):
            want = F.linear(x, w.float() * 0.01, layer.bias.float())
            torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)
        assert torch.equal(layer(small), F.linear(small * torch.tensor(0.01), w.float(), layer.bias.float()))
        assert torch.equal(layer(big), F.linear(big, w.float() * torch.tensor(0.01), layer.bias.float()))
    assert scaled_linear_factory() is ScaledFP8Linear and scaled_linear_factory(fast=True).fp8_mm


def test_fp8_matmul_path_uses_both_scales():
    gen = torch.Generator().manual_seed(1)
    fast = scaled_linear_factory(fast=True)(64, 48)
    fast.allow_cpu = True
    w = (torch.randn(48, 64, generator=gen) * 30).to(torch.float8_e4m3fn)
    fast.weight = nn.Parameter(w, requires_grad=False)
    fast.bias = nn.Parameter(torch.zeros(48, dtype=torch.bfloat16), requires_grad=False)
    fast.scale_weight.fill_(0.02)
    fast.scale_input.fill_(0.5)
    x = torch.randn(3, 64, generator=gen, dtype=torch.bfloat16)
    with torch.no_grad():
        got = fast(x).float()
    want = F.linear(x.float(), w.float() * 0.02)
    assert got.shape == (3, 48) and _rel(got, want) < 0.06  # the input is rounded to e4m3 too


@pytest.mark.parametrize("marker_elems", [0, 2])
def test_scaled_fp8_flux_loads_fp8_and_computes_as_comfyui(tmp_path, marker_elems):
    src = make_flux_file(tmp_path / "f32.safetensors", config=_CFG, dtype=torch.float32)
    ref = load_module_file(src, Flux, FluxConfig.from_state_dict)
    linears = _linear_names(ref)
    scaled_sd = _scale_file(src, tmp_path / "scaled.safetensors", linears, marker_elems=marker_elems,
                            with_input=True)
    m = load_module_file(tmp_path / "scaled.safetensors", Flux, FluxConfig.from_state_dict,
                         weight_dtype="fp8_e5m2")  # ignored for scaled files, as ComfyUI
    assert isinstance(m.img_in, ScaledFP8Linear) and not m.img_in.fp8_mm  # no fp8 units on the CPU
    for name, mod in m.named_modules():
        if isinstance(mod, ScaledFP8Linear):
            assert mod.weight.dtype == torch.float8_e4m3fn and mod.scale_weight.dtype == torch.float32
            assert float(mod.scale_weight) == float(scaled_sd[f"{name}.scale_weight"])
    others = {n: p.dtype for n, p in m.named_parameters() if n.rpartition(".")[0] not in linears}
    assert others and set(others.values()) == {torch.float32}  # norms etc. in the compute dtype
    emulated = Flux(_CFG).eval()  # the scaled weights, dequantised, in a plain float32 model
    state = {}
    for k, v in ref.state_dict().items():
        mod, _, leaf = k.rpartition(".")
        if mod in linears and leaf == "weight":
            state[k] = scaled_sd[k].float() * scaled_sd[f"{mod}.scale_weight"]
        elif mod in linears and leaf == "bias":
            state[k] = v.to(torch.float8_e4m3fn).float()  # ComfyUI keeps the whole layer in fp8
        else:
            state[k] = v
    emulated.load_state_dict(state)
    with torch.no_grad():
        out = m(*_inputs(_CFG))
        torch.testing.assert_close(out, emulated(*_inputs(_CFG)), rtol=1e-4, atol=1e-5)
        rel = _rel(out, ref(*_inputs(_CFG)))
    assert 1e-4 < rel < 0.08, rel  # fp8 rounding of per-tensor-scaled weights
    raw_bytes = sum(p.numel() * p.element_size() for p in ref.parameters())
    fp8_bytes = sum(p.numel() * p.element_size() for p in m.parameters())
    assert fp8_bytes < 0.5 * raw_bytes  # linear weights stay fp8 in memory


def test_scaled_fp8_t5_loads_instead_of_being_refused(tmp_path):
    src = make_t5_file(tmp_path / "t5xxl_fp16.safetensors", dtype=torch.float16)
    ref = load_module_file(src, T5Encoder, T5Config.from_state_dict)
    scaled_path = tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors"
    scaled_sd = _scale_file(src, scaled_path, _linear_names(ref))
    m = load_t5(scaled_path)
    lin = [mod for mod in m.modules() if isinstance(mod, ScaledFP8Linear)]
    assert lin and all(mod.weight.dtype == torch.float8_e4m3fn and not mod.fp8_mm for mod in lin)
    ids = torch.randint(0, 32100, (1, 20), generator=torch.Generator().manual_seed(0))
    emulated = T5Encoder(T5Config.tiny()).eval()
    state = {}
    linears = _linear_names(ref)
    for k, v in ref.state_dict().items():
        mod, _, leaf = k.rpartition(".")
        state[k] = (scaled_sd[k].float() * scaled_sd[f"{mod}.scale_weight"]
                    if mod in linears and leaf == "weight" else v.float())
    emulated.load_state_dict(state)
    with torch.no_grad():
        out = m(ids, dtype=torch.float32)
        torch.testing.assert_close(out, emulated(ids), rtol=1e-4, atol=1e-5)
        assert 1e-4 < _rel(out, ref(ids).float()) < 0.5


@pytest.mark.gpu
def test_scaled_fp8_matmul_on_a_gpu_with_fp8_units():
    from comfy_notebook.runtime.fp8 import fp8_matmul_supported

    dev = torch.device("cuda")
    if not fp8_matmul_supported(dev):
        pytest.skip("this GPU has no fp8 matmul (compute capability < 8.9)")
    gen = torch.Generator(device=dev).manual_seed(0)
    cast, fast = ScaledFP8Linear(3072, 3072, device=dev), scaled_linear_factory(fast=True)(3072, 3072, device=dev)
    w = (torch.randn(3072, 3072, generator=gen, device=dev) * 8).to(torch.float8_e4m3fn)
    b = torch.randn(3072, generator=gen, device=dev).to(torch.bfloat16)
    for m in (cast, fast):
        m.weight, m.bias = nn.Parameter(w, requires_grad=False), nn.Parameter(b, requires_grad=False)
        m.scale_weight.fill_(0.002)
    x = torch.randn(1, 4096, 3072, generator=gen, device=dev, dtype=torch.bfloat16)
    with torch.no_grad():
        y_cast, y_fast = cast(x), fast(x)
    assert y_fast.dtype == torch.bfloat16 and _rel(y_fast.float(), y_cast.float()) < 0.06
