"""Sweeps: cache-friendly ordering, the tidy table, xy_grid straight from it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from comfy_notebook.backends import WorkflowTemplate, sweep_order
from comfy_notebook.engine.events import NodeStarted
from comfy_notebook.errors import TemplateError

from .conftest import sd_prompt


def test_order_puts_the_cheapest_parameter_innermost() -> None:
    t = WorkflowTemplate.from_workflow(sd_prompt())
    grid = {"seed": [1, 2], "6.text": ["a", "b"], "ckpt_name": ["x", "y"], "3.steps": [1, 2]}
    order = sweep_order(t, grid)
    # A checkpoint change invalidates everything, a prompt change the encoder onwards, a seed or
    # step change only the sampler onwards (ties keep the caller's order).
    assert order == ["ckpt_name", "6.text", "seed", "3.steps"]


def test_sweep_table_reuses_the_cache_and_feeds_xy_grid(sd_session: Any) -> None:
    from comfy_notebook.plot import xy_grid

    started: list[str] = []
    unsubscribe = sd_session.subscribe(
        lambda e: started.append(e.class_type) if isinstance(e, NodeStarted) else None)
    try:
        table = sd_session.sweep(sd_prompt(), grid={"cfg": [4.0, 8.0], "6.text": ["a cat", "a dog"],
                                                    "seed": [1, 2]})
    finally:
        unsubscribe()
    rows = table.to_dict("records") if hasattr(table, "to_dict") else table
    assert len(rows) == 8
    # The text is outermost: each text encoded once (plus the negative once), never re-encoded.
    assert started.count("CLIPTextEncode") == 3 and started.count("KSampler") == 8
    assert [r["6.text"] for r in rows] == ["a cat"] * 4 + ["a dog"] * 4
    for r in rows:
        api = r["prompt"]
        assert api["3"]["inputs"]["cfg"] == r["cfg"] and api["3"]["inputs"]["seed"] == r["seed"]
        assert api["6"]["inputs"]["text"] == r["6.text"]
        assert r["image"].size == (64, 64) and r["seconds"] > 0 and r["worker"] == "in-process"
        assert r["node_id"] == "9" and r["filename"].endswith(".png")
    assert len({r["filename"] for r in rows}) == 8
    cats = [r for r in rows if r["6.text"] == "a cat"]
    fig = xy_grid(cats, x="cfg", y="seed")
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes[:2]] == ["cfg = 4.0", "cfg = 8.0"]


def test_sweep_over_a_template_with_its_own_variables(sd_session: Any) -> None:
    api = sd_prompt()
    api["3"]["inputs"]["cfg"] = "@cfg@"
    text = json.dumps(api).replace('"@cfg@"', "{{ cfg|float }}")
    template = WorkflowTemplate.from_string(text)
    table = sd_session.sweep(template, grid={"cfg": [2, 3]}, seed=5)
    rows = table.to_dict("records") if hasattr(table, "to_dict") else table
    assert [r["prompt"]["3"]["inputs"]["cfg"] for r in rows] == [2.0, 3.0]
    assert all(r["prompt"]["3"]["inputs"]["seed"] == 5 for r in rows)  # template default kept
    with pytest.raises(TemplateError, match="'cfg' is undefined"):
        sd_session.sweep(template, grid={"seed": [1]})
    with pytest.raises(ValueError, match="non-empty list"):
        sd_session.sweep(template, grid={"cfg": 3})
