"""Merge patches on managed toy models: ComfyUI's calculate_weight order (scale, then add), the
source's own patches (a LoRA on model2) in fp32, shape mismatches only scaled, the source
reloaded after an unload, and no base ever rebuilt when ratios change."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook.runtime import LoraPatch
from comfy_notebook.runtime.merge import (
    ModelWeightPatch,
    block_ratio,
    effective_weights,
    merge_refs,
)


def _forward(mgr, ref, x):
    with torch.no_grad(), mgr.use(ref) as mod:
        return mod(x)


def test_merge_formula_nested_lora_and_no_rebuilds(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(1 << 30)
    fa, fb = toy_factory(1), toy_factory(2)
    a = mgr.register("a", fa, kind="unet").ref()
    b = mgr.register("b", fb, kind="unet").ref()
    lora = {"a.weight": LoraPatch(torch.randn(16, 2), torch.randn(2, 16), 2.0)}
    b_lora = b.with_patches(lora, 0.5)
    wa, wb = effective_weights(a), effective_weights(b_lora)
    x = torch.randn(3, 16)
    outs = []
    for ratio in (0.25, 0.75, 0.25):
        m = merge_refs(a, b_lora, lambda key, r=ratio: (1.0 - r, r))
        wm = effective_weights(m)
        for k in wm:
            torch.testing.assert_close(wm[k], ratio * wa[k] + (1 - ratio) * wb[k], rtol=0, atol=1e-6)
        outs.append(_forward(mgr, m, x))
    assert torch.equal(outs[0], outs[2]) and not torch.equal(outs[0], outs[1])
    assert fa.calls["n"] == fb.calls["n"] == 1  # built once each, never again
    # the plain base is restored exactly after the merged clone used the device weights
    fresh = effective_weights(a)
    assert all(torch.equal(fresh[k], wa[k]) for k in wa)


def test_source_unloaded_is_rebuilt_on_use(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(1 << 30)
    fb = toy_factory(2)
    a = mgr.register("a", toy_factory(1), kind="unet").ref()
    b = mgr.register("b", fb, kind="unet").ref()
    m = merge_refs(a, b, lambda key: (0.5, 0.5))
    x = torch.randn(2, 16)
    before = _forward(mgr, m, x)
    mgr.unload(b)
    mgr.offload(a)
    assert torch.equal(_forward(mgr, m, x), before)
    assert fb.calls["n"] == 2  # the unload forced exactly one rebuild


def test_shape_mismatch_is_only_scaled_with_a_warning(toy_factory, manager_with_capacity) -> None:
    mgr = manager_with_capacity(1 << 30)
    a = mgr.register("a", toy_factory(1, width=16), kind="unet").ref()
    b = mgr.register("b", toy_factory(2, width=8), kind="unet").ref()
    with pytest.warns(UserWarning, match="differ in shape"):
        m = merge_refs(a, b, lambda key: (0.6, 0.4))
    wm, wa, wb = effective_weights(m), effective_weights(a), effective_weights(b)
    for k in wm:
        expect = 0.4 * wa[k] + (0.6 * wb[k] if wb[k].shape == wa[k].shape else 0.0)
        torch.testing.assert_close(wm[k], expect, rtol=0, atol=1e-6)
    assert any(wb[k].shape != wa[k].shape for k in wm)


def test_zero_strength_adds_nothing_and_block_ratio_prefers_longest() -> None:
    patch = ModelWeightPatch(source=None, key="w", strength=0.0)  # type: ignore[arg-type]
    assert torch.equal(patch.delta(torch.Size([2, 2]), torch.device("cpu")), torch.zeros(2, 2))
    ratios = {"out": 0.1, "output_blocks.1": 0.2, "output_blocks.11": 0.3}
    assert block_ratio("output_blocks.11.0.weight", ratios, 1.0) == 0.3
    assert block_ratio("output_blocks.1.0.weight", ratios, 1.0) == 0.2
    assert block_ratio("out.2.weight", ratios, 1.0) == 0.1
    assert block_ratio("time_embed.0.weight", ratios, 0.7) == 0.7
