"""The policy's dtype per model kind reaches the weights on every path (full, partial, reload).

On CUDA the policy builds the UNet in fp16 and callers cast their inputs to it; a model
registered without ``dtype=`` used to keep the factory's fp32 weights, so an fp16 input met
fp32 weights in ``F.linear`` ("mat1 and mat2 must have the same dtype").  These tests run the
same placements on the CPU with an fp16 UNet policy (accounting mode for the partial load).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from comfy_notebook.runtime import DevicePolicy, LoraPatch, ModelManager

HALF_CPU = DevicePolicy(device=torch.device("cpu"),
                        dtypes={"unet": torch.float16, "clip": torch.float16})


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(32, 32) for _ in range(6)])


def _x() -> torch.Tensor:
    return torch.randn(4, 32, generator=torch.Generator().manual_seed(1)).half()


def test_register_without_dtype_takes_the_policy_dtype_of_the_kind() -> None:
    mgr = ModelManager(HALF_CPU)
    m = mgr.register("m", _model, kind="unet")
    assert m.dtype == torch.float16
    with torch.no_grad(), mgr.use(m) as mod:
        assert {p.dtype for p in mod.parameters()} == {torch.float16}
        assert mod(_x()).dtype == torch.float16
    # an explicit dtype still wins, and a kind the policy does not know keeps the module's own
    assert mgr.register("e", _model, kind="unet", dtype=torch.float32).dtype == torch.float32
    assert mgr.register("o", _model, kind="upscaler").dtype is None


def test_fp16_input_after_offload_unload_and_lora_switch() -> None:
    mgr = ModelManager(HALF_CPU, capacity_bytes=1 << 30)
    m = mgr.register("m", _model, kind="unet")
    x = _x()
    with torch.no_grad(), mgr.use(m) as mod:
        ref = mod(x)
    mgr.offload(m)
    lora = {"0.weight": LoraPatch(torch.randn(32, 4), torch.randn(4, 32), 4.0)}
    with torch.no_grad(), mgr.use(m.ref().with_patches(lora, 0.5)) as mod:
        patched = mod(x)
    assert not torch.equal(patched, ref)
    mgr.unload(m)  # the factory rebuilds in fp32; the manager casts to the policy's fp16
    with torch.no_grad(), mgr.use(m) as mod:
        assert torch.equal(mod(x), ref)


def test_fp16_input_on_a_partial_load() -> None:
    mgr = ModelManager(HALF_CPU, capacity_bytes=1 << 30)
    m = mgr.register("m", _model, kind="unet")
    m.parameter_names()
    with torch.no_grad(), mgr.use(m) as mod:
        ref = mod(_x())
    mgr.offload(m)
    mgr.set_budget(m.nbytes // 3)
    with torch.no_grad(), mgr.use(m) as mod:
        out = mod(_x())
    assert m.location == "partial" and mgr.stats.bytes_streamed > 0
    assert torch.equal(out, ref)


@pytest.mark.parametrize("kind", ["unet", "clip", "vae"])
def test_every_kind_follows_the_policy(kind: str) -> None:
    mgr = ModelManager(HALF_CPU)
    assert mgr.register(kind, _model, kind=kind).dtype == HALF_CPU.dtype_for(kind)
