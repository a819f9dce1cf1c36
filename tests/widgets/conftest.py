"""Fixtures for the widget tests: a fake session (event stream + interrupt) and a real manager."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from comfy_notebook.services import Services


class FakeSession:
    """The slice of ``Session`` the widgets use: subscribe / interrupt / run_prompt / output_dir."""

    def __init__(self, output_dir: Any = None) -> None:
        self.subscribers: list[Callable[[Any], None]] = []
        self.interrupts = 0
        self.output_dir = output_dir
        self.services = Services(self)
        self.prompts: list[Any] = []

    def subscribe(self, fn: Callable[[Any], None]) -> Callable[[], None]:
        self.subscribers.append(fn)
        return lambda: self.subscribers.remove(fn)

    def emit(self, event: Any) -> None:
        for fn in list(self.subscribers):
            fn(event)

    def interrupt(self) -> None:
        self.interrupts += 1

    def run_prompt(self, prompt: Any, **kwargs: Any) -> str:
        self.prompts.append(prompt)
        return "result"


@pytest.fixture
def fake_session(tmp_path: Any) -> FakeSession:
    return FakeSession(output_dir=tmp_path / "out")


@pytest.fixture
def manager() -> Any:
    """A real ModelManager on the CPU with a fake 1 MB device (accounting mode) and two models."""
    import torch

    from comfy_notebook.runtime import DevicePolicy, ModelManager

    mgr = ModelManager(DevicePolicy.cpu(), capacity_bytes=1 << 20)
    mgr.register("unet", lambda: torch.nn.Linear(64, 64), kind="unet", source="tiny.safetensors")
    mgr.register("vae", lambda: torch.nn.Linear(16, 16), kind="vae", source="tiny.safetensors")
    return mgr


@pytest.fixture
def sd_prompt() -> dict[str, Any]:
    """A default-text-to-image-shaped API prompt (ComfyUI's default workflow ids)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bottle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 42, "steps": 20, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "t", "images": ["8", 0]}},
    }
