"""Fixtures for the backends tests: a tiny SD1 checkpoint in a ComfyUI-shaped folder, sessions
on it, and a torch-free node pack with a slow, interruptible node for the queue tests."""

from __future__ import annotations

import pathlib
import threading
import time
from typing import Any

import pytest

from comfy_notebook._session import Session
from comfy_notebook.engine import current_context

CKPT = "tiny.safetensors"


@pytest.fixture(scope="session")
def sd_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """``models/checkpoints/tiny.safetensors`` (preset sd1-tiny) plus input/output folders."""
    from comfy_notebook.testing import make_checkpoint

    base = tmp_path_factory.mktemp("backends_sd")
    make_checkpoint(base / "models" / "checkpoints" / CKPT, preset="sd1-tiny", seed=0)
    (base / "input").mkdir()
    return base


def new_sd_session(root: pathlib.Path, out: str = "output") -> Session:
    from comfy_notebook.nodes import register_builtins

    s = Session(models_dir=root, output_dir=root / out)
    s.options = {"progress": False}
    register_builtins(s)
    return s


@pytest.fixture(scope="module")
def sd_session(sd_root: pathlib.Path) -> Session:
    """One SD session per test module (models stay loaded)."""
    return new_sd_session(sd_root, "output_" + str(time.monotonic_ns()))


def sd_prompt(seed: int = 7, steps: int = 2, size: int = 64, sampler: str = "euler",
              cfg: float = 8.0, batch_size: int = 1) -> dict[str, Any]:
    """ComfyUI's default prompt on the tiny checkpoint, small and quick."""
    from comfy_notebook.demo import default_prompt

    api = default_prompt()
    api["4"]["inputs"]["ckpt_name"] = CKPT
    api["5"]["inputs"].update(width=size, height=size, batch_size=batch_size)
    api["3"]["inputs"].update(seed=seed, steps=steps, sampler_name=sampler, cfg=cfg)
    return api


# -- a torch-free pack for the queue -----------------------------------------------------------
class Gate:
    """Lets a test hold a ``Slow`` node inside its loop until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()


GATE = Gate()
RAN: list[int] = []


class Slow:
    """Sleeps ``steps`` x 10 ms, reporting progress (so interrupts stop it), returns its tag."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"tag": ("INT", {"default": 0, "min": -10**9, "max": 10**9}),
                             "steps": ("INT", {"default": 2, "min": 1, "max": 10**6})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    NOT_IDEMPOTENT = True

    def run(self, tag: int, steps: int) -> tuple[int]:
        ctx = current_context()
        GATE.entered.set()
        for i in range(steps):
            while not GATE.release.wait(0.01):
                ctx.check_interrupt()
            time.sleep(0.01)
            ctx.progress(i + 1, steps)
        return (tag,)


class Keep:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value: int) -> dict[str, Any]:
        RAN.append(value)
        return {"ui": {"value": [value]}}


PACK = {"Slow": Slow, "Keep": Keep}


def slow_prompt(tag: int, steps: int = 2) -> dict[str, Any]:
    return {"1": {"class_type": "Slow", "inputs": {"tag": tag, "steps": steps}},
            "2": {"class_type": "Keep", "inputs": {"value": ["1", 0]}}}


@pytest.fixture
def queue_session() -> Any:
    s = Session()
    s.register(PACK)
    RAN.clear()
    GATE.release.set()
    GATE.entered.clear()
    yield s
    GATE.release.set()
    if s._queue is not None:
        s._queue.close()
