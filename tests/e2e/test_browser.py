"""JupyterLab in headless Chromium: the Gallery shows a run's images and the ModelPanel's
"offload" button moves a model to the CPU, checked from the kernel.

The notebook is generated here (a Session with a small test node pack and a ModelManager in
accounting mode, so no checkpoint is needed); screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import pathlib
import re
import time
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SETUP = '''\
import torch
from comfy_notebook.runtime import DevicePolicy, ModelManager
from comfy_notebook._session import Session
from comfy_notebook.widgets import Gallery, ModelPanel


class MakeImages:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "batch": ("INT", {"default": 3})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, seed, batch):
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(batch, 64, 64, 3, generator=g),)


class ShowImages:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True
    CATEGORY = "test"

    def show(self, images):
        return {"ui": {"count": [images.shape[0]]}}


session = Session()
session.register({"MakeImages": MakeImages, "ShowImages": ShowImages})
manager = ModelManager(DevicePolicy.cpu(), capacity_bytes=64 << 20)  # accounting "GPU"
session.services["models"] = manager
manager.register("tiny-unet", lambda: torch.nn.Linear(32, 32), kind="unet", source="tiny.safetensors")
manager.load("tiny-unet")
print("LOADED=" + manager["tiny-unet"].location)
'''

GALLERY = '''\
prompt = {"1": {"class_type": "MakeImages", "inputs": {"seed": 1, "batch": 3}},
          "2": {"class_type": "ShowImages", "inputs": {"images": ["1", 0]}}}
result = session.run_prompt(prompt)
gallery = Gallery()
gallery.add_result(result, prompt)
gallery
'''

PANEL = "ModelPanel(manager)\n"
CHECK = 'print("LOCATION=" + manager["tiny-unet"].location)\n'


def _notebook(cells: list[str]) -> dict[str, Any]:
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                   "outputs": [], "source": src} for i, src in enumerate(cells)],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def _run_cell(page: Any, index: int, timeout_s: float = 90) -> None:
    """Select cell ``index``, run it with Shift+Enter, and wait until it has finished.

    Keys pressed while JupyterLab is still settling can be lost, so the run is retried until
    the prompt shows ``[*]`` or an execution count.
    """
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    prompt = cell.locator(".jp-InputPrompt")
    for _ in range(5):
        prompt.click()
        page.keyboard.press("Shift+Enter")
        deadline = time.monotonic() + 5
        while prompt.inner_text().strip() in ("[ ]:", "") and time.monotonic() < deadline:
            time.sleep(0.1)
        if prompt.inner_text().strip() not in ("[ ]:", ""):
            break
    deadline = time.monotonic() + timeout_s
    while not re.fullmatch(r"\[\d+\]:", prompt.inner_text().strip()):
        assert time.monotonic() < deadline, f"cell {index} did not finish: {prompt.inner_text()!r}"
        time.sleep(0.1)
    errors = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    texts = errors.all_inner_texts()
    assert not any("Error" in t for t in texts), f"cell {index} raised:\n{texts}"


def test_gallery_and_offload_button(lab: Any, page: Any, artifacts: pathlib.Path) -> None:
    (lab.root / "widgets_smoke.ipynb").write_text(json.dumps(_notebook([SETUP, GALLERY, PANEL, CHECK])))
    page.goto(lab.url("lab/tree/widgets_smoke.ipynb"))
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
        state="attached", timeout=60_000)
    for i in range(3):
        _run_cell(page, i)
    cells = page.locator(".jp-Notebook .jp-Cell")
    cells.nth(0).get_by_text("LOADED=gpu").wait_for(timeout=30_000)

    thumbs = page.locator(".cn-gallery img.cn-thumb")
    thumbs.nth(2).wait_for(timeout=90_000)
    assert thumbs.count() == 3
    assert thumbs.evaluate_all("imgs => imgs.map(i => i.naturalWidth)") == [64, 64, 64]

    location = page.locator(".cn-models tr[data-name='tiny-unet'] .cn-loc")
    location.wait_for(timeout=60_000)
    assert location.inner_text() == "gpu"
    page.screenshot(path=str(artifacts / "browser_widgets_before.png"), full_page=True)

    thumbs.nth(1).click()  # enlarge: Python sends the full-size image
    full = page.locator(".cn-lightbox img.cn-full")
    full.wait_for(timeout=30_000)
    assert full.evaluate("i => i.complete && i.naturalWidth") == 64
    page.screenshot(path=str(artifacts / "browser_widgets_lightbox.png"))
    page.locator(".cn-lightbox").click()
    full.wait_for(state="detached", timeout=30_000)

    page.locator(".cn-models tr[data-name='tiny-unet'] button.cn-offload").click()
    page.locator(".cn-models tr[data-name='tiny-unet'] .cn-loc", has_text="cpu").wait_for(
        timeout=30_000)
    page.locator(".cn-models .cn-message", has_text="offloaded tiny-unet").wait_for(timeout=30_000)

    _run_cell(page, 3)  # ask the kernel itself
    cells.nth(3).get_by_text("LOCATION=cpu").wait_for(timeout=60_000)
    page.screenshot(path=str(artifacts / "browser_widgets_after.png"), full_page=True)
