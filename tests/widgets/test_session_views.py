"""Widgets over a real Session: RunView follows a run, its button interrupts it cleanly, Gallery
shows a PromptResult's images."""

from __future__ import annotations

import time
from typing import Any

import torch

from comfy_notebook._session import Session
from comfy_notebook.engine import current_context
from comfy_notebook.errors import ExecutionInterrupted
from comfy_notebook.widgets.gallery import Gallery
from comfy_notebook.widgets.run_view import RunView


class NoiseSteps:
    """Reports progress with a latent preview every step; returns an IMAGE batch."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"seed": ("INT", {"default": 0}), "steps": ("INT", {"default": 4}),
                             "delay": ("FLOAT", {"default": 0.0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, seed: int, steps: int, delay: float) -> tuple[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        latent = torch.randn(1, 4, 4, 4, generator=g)
        for i in range(1, steps + 1):
            time.sleep(delay)
            current_context().progress(i, steps, latent)
        return (torch.rand(2, 8, 8, 3, generator=g),)


class ShowImages:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True
    CATEGORY = "test"

    def show(self, images: torch.Tensor) -> dict[str, Any]:
        return {"ui": {"count": [int(images.shape[0])]}}


def make_session() -> Session:
    s = Session(builtins=False)
    s.register({"NoiseSteps": NoiseSteps, "ShowImages": ShowImages})
    return s


def prompt(steps: int = 4, delay: float = 0.0) -> dict[str, Any]:
    return {"1": {"class_type": "NoiseSteps", "inputs": {"seed": 1, "steps": steps, "delay": delay}},
            "2": {"class_type": "ShowImages", "inputs": {"images": ["1", 0]}}}


def test_run_view_follows_a_real_run_and_cache_hits() -> None:
    s = make_session()
    view = RunView(s)
    seen: list[float] = []
    view.observe(lambda change: seen.append(change["new"]), names="value")
    result = s.run_prompt(prompt())
    assert view.status == "finished" and view.prompt_id == result.prompt_id
    assert {n: e["status"] for n, e in view.nodes.items()} == {"1": "done", "2": "done"}
    assert seen == [1, 2, 3, 4, 0]  # steps of node 1, then reset when node 2 starts
    assert view.preview.startswith("data:image/png")
    s.run_prompt(prompt())
    # fully cached: the output node is a hit; its input is reported cached or was not needed
    assert view.nodes["2"]["status"] == "cached"
    assert view.nodes["1"]["status"] in ("cached", "skipped")
    g = Gallery()
    g.add_result(result, prompt())
    assert len(g.items) == 2
    assert (g.image(1) == (result.outputs["1"][0][1].numpy() * 255).round()).all()


def test_interrupt_button_stops_a_background_run_cleanly() -> None:
    s = make_session()
    view = RunView(s)
    thread = view.start(prompt(steps=2000, delay=0.002))
    deadline = time.monotonic() + 10
    while view.value < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    view._handle_custom_msg({"action": "interrupt"}, [])  # what the JS button sends
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(view.result, ExecutionInterrupted) and view.result.node_id == "1"
    assert view.status == "interrupted" and view.nodes["1"]["status"] == "interrupted"
    assert 3 <= view.value < 2000 and view.error.startswith("interrupted at step")
    assert len(s.cache) == 0  # the interrupted node stored nothing
    # the next run works (the flag is cleared at its start)
    s.run_prompt(prompt(steps=2))
    assert view.status == "finished"
