"""ReferenceLatent / FluxKontextMultiReferenceLatentMethod: conditioning options as ComfyUI sets them."""

from __future__ import annotations

import torch

from comfy_notebook.nodes.edit_model import FluxKontextMultiReferenceLatentMethod, ReferenceLatent


def test_reference_latents_append_in_order_and_leave_the_input_alone():
    cond = [[torch.zeros(1, 3, 8), {"pooled_output": None}]]
    a, b = {"samples": torch.zeros(1, 16, 4, 4)}, {"samples": torch.ones(1, 16, 2, 6)}
    (one,) = ReferenceLatent().append(cond, a)
    (two,) = ReferenceLatent().append(one, b)
    assert [r.shape for r in two[0][1]["reference_latents"]] == [(1, 16, 4, 4), (1, 16, 2, 6)]
    assert "reference_latents" not in cond[0][1] and len(one[0][1]["reference_latents"]) == 1
    assert ReferenceLatent().append(cond, None)[0] is cond


def test_method_node_stores_comfyui_names():
    cond = [[torch.zeros(1, 3, 8), {}]]
    node = FluxKontextMultiReferenceLatentMethod()
    assert node.append(cond, "uxo/uno")[0][0][1]["reference_latents_method"] == "uxo"
    assert node.append(cond, "offset")[0][0][1]["reference_latents_method"] == "offset"
