"""Older ComfyUI PNGs: an API prompt lacking inputs added later (VAEEncodeForInpaint.grow_mask_by)
falls back to the workflow chunk, converted with defaults as ComfyUI's web UI does, and the
defaults filled are reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from comfy_notebook._session import Session
from comfy_notebook.errors import ValidationError
from comfy_notebook.nodes import register_builtins
from comfy_notebook.pnginfo import (
    FilledDefaultsWarning,
    api_to_workflow,
    missing_defaults,
    read_prompt,
)


def _inpaint_prompt() -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "12": {"class_type": "VAEEncodeForInpaint", "inputs": {
            "pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1], "grow_mask_by": 6}},
    }


@pytest.fixture
def session() -> Session:
    s = Session()
    register_builtins(s)
    return s


def _old_png(path: Path, session: Session, *, with_workflow: bool = True) -> Path:
    """A PNG as a 2023 ComfyUI wrote it: no grow_mask_by anywhere."""
    api = _inpaint_prompt()
    workflow = api_to_workflow(api, session.registry)
    del api["12"]["inputs"]["grow_mask_by"]
    for node in workflow["nodes"]:
        if node["type"] == "VAEEncodeForInpaint":
            node["widgets_values"] = []
    meta = PngInfo()
    meta.add_text("prompt", json.dumps(api))
    if with_workflow:
        meta.add_text("workflow", json.dumps(workflow))
    Image.new("RGB", (8, 8)).save(path, pnginfo=meta)
    return path


def test_old_prompt_fails_validation_as_in_comfyui(tmp_path: Path, session: Session) -> None:
    png = _old_png(tmp_path / "old.png", session)
    raw = read_prompt(png)  # no registry: the chunk as stored
    assert raw.source == "prompt" and "grow_mask_by" not in raw["12"]["inputs"]
    assert [str(m) for m in missing_defaults(raw, session.registry)] == [
        "node 12 (VAEEncodeForInpaint).grow_mask_by=6"]
    with pytest.raises(ValidationError) as info:
        session.run_prompt(raw, targets=["12"])
    assert "12" in info.value.node_errors


def test_falls_back_to_the_workflow_and_reports_defaults(tmp_path: Path, session: Session) -> None:
    png = _old_png(tmp_path / "old.png", session)
    with pytest.warns(FilledDefaultsWarning, match=r"VAEEncodeForInpaint\)\.grow_mask_by=6"):
        api = read_prompt(png, session.registry)
    assert api.source == "workflow"
    assert [(f.node_id, f.input, f.value) for f in api.filled_defaults] == [("12", "grow_mask_by", 6)]
    expected = _inpaint_prompt()
    assert {k: v["inputs"] for k, v in api.items()} == {k: v["inputs"] for k, v in expected.items()}


def test_without_a_workflow_the_defaults_go_into_the_prompt(tmp_path: Path, session: Session) -> None:
    png = _old_png(tmp_path / "bare.png", session, with_workflow=False)
    with pytest.warns(FilledDefaultsWarning, match="filled them into the prompt"):
        api = read_prompt(png, session.registry)
    assert api.source == "prompt+defaults" and api["12"]["inputs"]["grow_mask_by"] == 6


def test_current_prompts_are_returned_untouched(tmp_path: Path, session: Session,
                                               recwarn: pytest.WarningsRecorder) -> None:
    meta = PngInfo()
    meta.add_text("prompt", json.dumps(_inpaint_prompt()))
    path = tmp_path / "new.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=meta)
    api = read_prompt(path, session.registry)
    assert api == _inpaint_prompt() and api.source == "prompt" and not api.filled_defaults
    assert not [w for w in recwarn if issubclass(w.category, FilledDefaultsWarning)]
