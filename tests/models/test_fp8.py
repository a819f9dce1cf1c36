"""fp8 weights: stay fp8 in memory, cast per layer, match their bf16 source within fp8 rounding."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from comfy_notebook.models.flux import Flux, FluxConfig
from comfy_notebook.models.t5 import T5Config, T5Encoder
from comfy_notebook.runtime.fp8 import (
    CastLinear,
    FP8MatmulLinear,
    linear_factory,
    storage_dtype,
)
from comfy_notebook.runtime.loading import open_state_dict
from comfy_notebook.runtime.module_loading import load_module_file
from comfy_notebook.testing import make_flux_file, make_t5_file

# Flux wide enough for the fp8 matmul path (dimensions multiples of 16).
_CFG = dataclasses.replace(FluxConfig.tiny(), hidden_size=128, num_heads=2, axes_dim=(8, 28, 28),
                           context_in_dim=64, vec_in_dim=32)


def _inputs(cfg: FluxConfig):
    gen = torch.Generator().manual_seed(3)
    return (torch.randn(1, 16, 8, 8, generator=gen), torch.tensor([0.7]),
            torch.randn(1, 5, cfg.context_in_dim, generator=gen), torch.randn(1, cfg.vec_in_dim, generator=gen),
            torch.tensor([3.5]))


def _load(path, weight_dtype="default"):
    return load_module_file(path, Flux, FluxConfig.from_state_dict, weight_dtype=weight_dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_policy_and_factory():
    bf16, f32, e4, e5 = torch.bfloat16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2
    assert storage_dtype("default", bf16, bf16) == bf16
    assert storage_dtype("default", e4, bf16) == e4  # an fp8 file stays fp8
    assert storage_dtype("fp8_e5m2", bf16, bf16) == e5
    assert storage_dtype("fp8_e4m3fn_fast", f32, bf16) == e4
    with pytest.raises(ValueError, match="weight_dtype must be one of"):
        storage_dtype("int4", bf16, bf16)
    assert linear_factory(bf16, bf16) is nn.Linear
    assert linear_factory(e4, bf16) is CastLinear
    assert linear_factory(e4, bf16, fast=True) is FP8MatmulLinear  # decides per call from the device
    assert linear_factory(e5, bf16, fast=True) is CastLinear


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_file_stays_fp8_and_matches_its_bf16_source(tmp_path, dtype):
    src = make_flux_file(tmp_path / "bf16.safetensors", config=_CFG, dtype=torch.bfloat16)
    raw = open_state_dict(src)
    from safetensors.torch import save_file

    fp8_path = tmp_path / "fp8.safetensors"
    save_file({k: raw[k].to(dtype) for k in raw}, str(fp8_path))
    ref, fp8 = _load(src), _load(fp8_path)
    assert all(p.dtype == dtype for p in fp8.parameters())  # never upcast as a whole
    assert isinstance(fp8.img_in, CastLinear) and type(ref.img_in) is nn.Linear
    with torch.no_grad():
        out_fp8 = fp8(*_inputs(_CFG))
        # exactly the bf16 model with its weights rounded to fp8 (the per-layer cast is the only change)
        emulated = Flux(_CFG).eval()
        emulated.load_state_dict({k: v.to(dtype).float() for k, v in ref.state_dict().items()})
        assert torch.equal(out_fp8, emulated(*_inputs(_CFG)))
        rel = _rel(out_fp8, ref(*_inputs(_CFG)))
    # measured on this random model: e4m3fn 0.063, e5m2 0.119 relative L2 error (3 vs 2 mantissa bits)
    assert rel < (0.08 if dtype == torch.float8_e4m3fn else 0.15), rel
    assert rel > 1e-4  # the weights really are rounded


def test_weight_dtype_option_casts_a_bf16_file(tmp_path):
    src = make_flux_file(tmp_path / "bf16.safetensors", config=_CFG)
    m = _load(src, "fp8_e4m3fn")
    assert {p.dtype for p in m.parameters()} == {torch.float8_e4m3fn}
    assert m.storage_dtype == torch.float8_e4m3fn and m.compute_dtype == torch.float32
    with torch.no_grad():
        assert torch.isfinite(m(*_inputs(_CFG))).all()


def test_fp8_matmul_layer_matches_the_cast_layer():
    gen = torch.Generator().manual_seed(0)
    cast, fast = CastLinear(64, 48), FP8MatmulLinear(64, 48)
    fallback = FP8MatmulLinear(64, 48)  # on the CPU the fast layer falls back to the cast path
    fast.allow_cpu = True  # ... unless told to run _scaled_mm there (its CPU kernel), to test the math
    w = (torch.randn(48, 64, generator=gen) / 8).to(torch.float8_e4m3fn)
    b = torch.randn(48, generator=gen).to(torch.float8_e4m3fn)
    for m in (cast, fast, fallback):
        m.weight, m.bias = nn.Parameter(w, requires_grad=False), nn.Parameter(b, requires_grad=False)
    x = torch.randn(2, 7, 64, generator=gen, dtype=torch.bfloat16)
    with torch.no_grad():
        y_cast, y_fast = cast(x), fast(x)
        assert torch.equal(fallback(x), y_cast)
    assert y_fast.shape == (2, 7, 48) and y_fast.dtype == torch.bfloat16
    # the fast path also rounds the input to e4m3 (3 mantissa bits): measured ~0.03
    assert _rel(y_fast.float(), y_cast.float()) < 0.06
    odd = FP8MatmulLinear(10, 6)  # not a multiple of 16: falls back to the cast path
    odd.weight = nn.Parameter(torch.randn(6, 10).to(torch.float8_e4m3fn), requires_grad=False)
    odd.bias = nn.Parameter(torch.zeros(6, dtype=torch.bfloat16), requires_grad=False)
    xo = torch.randn(3, 10, dtype=torch.bfloat16)
    assert torch.equal(odd(xo), CastLinear.forward(odd, xo))


def test_t5_fp8_file_encodes_like_its_fp16_source(tmp_path):
    src = make_t5_file(tmp_path / "t5xxl_fp16.safetensors", dtype=torch.float16)
    raw = open_state_dict(src)
    from safetensors.torch import save_file

    fp8_path = tmp_path / "t5xxl_fp8_e4m3fn.safetensors"
    save_file({k: raw[k].float().to(torch.float8_e4m3fn) for k in raw}, str(fp8_path))
    ref = load_module_file(src, T5Encoder, T5Config.from_state_dict)
    fp8 = load_module_file(fp8_path, T5Encoder, T5Config.from_state_dict)
    assert {p.dtype for p in fp8.parameters()} == {torch.float8_e4m3fn}
    ids = torch.randint(0, 32100, (1, 20), generator=torch.Generator().manual_seed(0))
    emulated = T5Encoder(T5Config.tiny()).eval()
    emulated.load_state_dict({k: v.float().to(torch.float8_e4m3fn).float() for k, v in ref.state_dict().items()})
    with torch.no_grad():
        out = fp8(ids, dtype=torch.float32)
        assert torch.equal(out, emulated(ids))  # per-layer casts change nothing but the weights' rounding
        rel = _rel(out, ref(ids))
    # measured 0.24-0.32: a random 2-layer T5 amplifies the 2.7% weight rounding (unscaled attention logits)
    assert 1e-3 < rel < 0.5


_RSS_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    from comfy_notebook.models.flux import Flux, FluxConfig
    from comfy_notebook.runtime.module_loading import load_module_file

    load_module_file(sys.argv[2], Flux, FluxConfig.from_state_dict)  # warm-up (one-time library state)

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
        fh.write("5")
    base = status("VmRSS:")
    m = load_module_file(sys.argv[1], Flux, FluxConfig.from_state_dict, weight_dtype=sys.argv[3],
                         compute_dtype=torch.bfloat16)
    total = sum(float(p.float().sum()) for p in m.parameters())  # touch every weight
    print(status("VmHWM:") - base, sum(p.numel() * p.element_size() for p in m.parameters()))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(("file_dtype", "weight_dtype"), [
    (torch.bfloat16, "default"), (torch.float8_e4m3fn, "default"), (torch.bfloat16, "fp8_e4m3fn")])
def test_loading_never_holds_two_copies(tmp_path, file_dtype, weight_dtype):
    wide = dataclasses.replace(_CFG, hidden_size=1024, num_heads=8, axes_dim=(16, 56, 56), depth=2,
                               depth_single_blocks=2, context_in_dim=256, vec_in_dim=256)
    path = make_flux_file(tmp_path / "wide.safetensors", config=wide, dtype=file_dtype)
    size = os.path.getsize(path)
    warm = make_flux_file(tmp_path / "warm.safetensors", config=_CFG)
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, path, warm, weight_dtype], capture_output=True,
                         text=True, env=env, check=True)
    peak, model_bytes = (int(v) for v in out.stdout.split())
    # Mapped file pages count in RSS.  Same dtype: the weights are the mapped pages (zero copy),
    # peak ~ file size.  bf16 file -> fp8: the file's pages plus the fp8 model (half the file),
    # measured 340 MB for a 227 MB file; never a full-precision copy next to the file.
    converted = model_bytes if file_dtype != torch.float8_e4m3fn and weight_dtype != "default" else 0
    assert peak < size + converted + model_bytes * 0.3 + 20e6, (peak / 1e6, size / 1e6, model_bytes / 1e6)


@pytest.mark.gpu
def test_fp8_matmul_on_a_gpu_with_fp8_units():
    from comfy_notebook.runtime.fp8 import fp8_matmul_supported

    dev = torch.device("cuda")
    if not fp8_matmul_supported(dev):
        pytest.skip("this GPU has no fp8 matmul (compute capability < 8.9)")
    assert linear_factory(torch.float8_e4m3fn, torch.bfloat16, fast=True, device=dev) is FP8MatmulLinear
    gen = torch.Generator(device=dev).manual_seed(0)
    cast, fast = CastLinear(3072, 3072, device=dev), FP8MatmulLinear(3072, 3072, device=dev)
    w = (torch.randn(3072, 3072, generator=gen, device=dev) / 55).to(torch.float8_e4m3fn)
    b = torch.randn(3072, generator=gen, device=dev).to(torch.bfloat16)
    for m in (cast, fast):
        m.weight, m.bias = nn.Parameter(w, requires_grad=False), nn.Parameter(b, requires_grad=False)
    x = torch.randn(1, 4096, 3072, generator=gen, device=dev, dtype=torch.bfloat16)
    with torch.no_grad():
        y_cast, y_fast = cast(x), fast(x)
    assert y_fast.dtype == torch.bfloat16 and _rel(y_fast.float(), y_cast.float()) < 0.06


@pytest.mark.gpu
def test_fp8_flux_on_gpu_matches_emulation(tmp_path):
    src = make_flux_file(tmp_path / "bf16.safetensors", config=_CFG)
    for wd in ("fp8_e4m3fn", "fp8_e4m3fn_fast"):
        m = load_module_file(src, Flux, FluxConfig.from_state_dict, weight_dtype=wd, device="cuda")
        assert m.compute_dtype == torch.bfloat16 and {p.dtype for p in m.parameters()} == {torch.float8_e4m3fn}
        ref = load_module_file(src, Flux, FluxConfig.from_state_dict, device="cuda")
        inputs = [t.cuda().to(torch.bfloat16) if t.is_floating_point() else t.cuda() for t in _inputs(_CFG)]
        with torch.no_grad():
            rel = _rel(m(*inputs).float(), ref(*inputs).float())
        assert rel < 0.15, (wd, rel)
