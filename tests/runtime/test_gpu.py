"""CUDA checks (skipped without a GPU): pinned flat reload, budget respected by real allocations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from comfy_notebook.runtime import DevicePolicy, LoraPatch, ModelManager

pytestmark = pytest.mark.gpu


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(512, 512) for _ in range(8)])


def test_pinned_reload_and_lora_switch_on_cuda() -> None:
    mgr = ModelManager(DevicePolicy.cuda(0), reserve_bytes=0)
    m = mgr.register("m", _model, kind="unet")
    x = torch.randn(4, 512, device="cuda", dtype=torch.float16)
    with torch.no_grad(), mgr.use(m) as mod:
        ref = mod(x)
        assert m.pinned and next(mod.parameters()).is_cuda
    mgr.offload(m)
    assert not next(m._module.parameters()).is_cuda
    lora = {"0.weight": LoraPatch(torch.randn(512, 4), torch.randn(4, 512), 4.0)}
    with torch.no_grad(), mgr.use(m.ref().with_patches(lora, 0.5)) as mod:
        patched = mod(x)
    with torch.no_grad(), mgr.use(m) as mod:
        torch.testing.assert_close(mod(x), ref, rtol=0, atol=0)
    assert not torch.equal(patched, ref)


def test_partial_load_stays_under_budget_on_cuda() -> None:
    mgr = ModelManager(DevicePolicy.cuda(0), reserve_bytes=0)
    m = mgr.register("m", _model, kind="unet")
    m.parameter_names()  # builds the model on the host, so nbytes is known
    budget = m.nbytes // 3
    mgr.set_budget(budget)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    x = torch.randn(4, 512, device="cuda", dtype=torch.float16)
    with torch.no_grad(), mgr.use(m, memory_required=1 << 20) as mod:
        y = mod(x)
    assert m.location == "partial" and y.isfinite().all()
    assert torch.cuda.max_memory_allocated() - start <= budget + (1 << 20) + 512 * 512 * 2
