"""Low-precision calls fall back to float32 when the result is not finite (never a black image)."""

from __future__ import annotations

import torch
from torch import nn

from comfy_notebook.runtime import DevicePolicy, ModelManager, precision


def _big(dtype: torch.dtype) -> nn.Module:
    lin = nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight.fill_(1000.0)
        lin.bias.zero_()
    return nn.Sequential(lin, nn.Linear(4, 4)).to(dtype)


def _run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    dtype = next(module.parameters()).dtype
    return module(x.to(dtype)).float()


def test_an_fp16_overflow_is_redone_in_fp32_and_the_weights_stay_fp16() -> None:
    m = _big(torch.float16)
    x = torch.full((2, 4), 100.0)  # 4e5 per output: beyond fp16's 65504
    assert not torch.isfinite(_run(m, x)).all()
    before = precision.fallbacks()
    with torch.no_grad():
        out = precision.finite_or_upcast(m, lambda: _run(m, x))
    assert torch.isfinite(out).all() and precision.fallbacks() == before + 1
    ref = _big(torch.float32)
    ref.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(out, ref(x))
    assert {p.dtype for p in m.parameters()} == {torch.float16}


def test_a_finite_result_runs_once() -> None:
    m = _big(torch.bfloat16)
    calls = []

    def fn() -> torch.Tensor:
        calls.append(1)
        return _run(m, torch.ones(1, 4))

    before = precision.fallbacks()
    with torch.no_grad():
        precision.finite_or_upcast(m, fn)
    assert len(calls) == 1 and precision.fallbacks() == before


def test_partially_loaded_model_streams_fp32_weights_in_the_fallback() -> None:
    policy = DevicePolicy(device=torch.device("cpu"), dtypes={"vae": torch.float16})
    mgr = ModelManager(policy, capacity_bytes=1 << 30)
    m = mgr.register("vae", lambda: _big(torch.float32), kind="vae")
    m.parameter_names()
    mgr.set_budget(m.nbytes // 2)
    x = torch.full((2, 4), 100.0)
    with torch.no_grad(), mgr.use(m) as module:
        assert m.location == "partial"
        out = precision.finite_or_upcast(module, lambda: _run(module, x), streamer=m.streamer)
        assert m.streamer is not None and m.streamer.dtype == torch.float16
    assert torch.isfinite(out).all()
    assert {p.dtype for p in m._module.parameters()} == {torch.float16}
