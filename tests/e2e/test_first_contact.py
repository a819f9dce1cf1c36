"""Issue 11: what a new user meets in the first ten minutes (tiny random-weight checkpoint, CPU).

Each test names the defect it guards against.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import traceback
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

import comfy_notebook
from comfy_notebook import NodeCallError, Session
from comfy_notebook.realmode import control, node_function
from comfy_notebook.testing import make_checkpoint

CKPT = "v1-5-pruned-emaonly.safetensors"  # the name ComfyUI's default prompt uses


@pytest.fixture(scope="module")
def comfy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("comfy")
    make_checkpoint(root / "models" / "checkpoints" / CKPT, preset="sd1-tiny", seed=0)
    (root / "input").mkdir()
    return root


@pytest.fixture
def no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No models folder anywhere: no argument, no environment, no config file, empty cwd."""
    monkeypatch.delenv("COMFY_NOTEBOOK_MODELS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def current(request: pytest.FixtureRequest) -> Any:
    """Make a session current for the test; restore the previous one afterwards."""
    previous = comfy_notebook._session._current

    def use(s: Session) -> Session:
        s.options["progress"] = False
        return comfy_notebook.use_session(s)

    yield use
    comfy_notebook._session._current = previous


def default_prompt() -> dict[str, Any]:
    text = resources.files("comfy_notebook.data").joinpath("default_txt2img_api.json").read_text()
    return json.loads(text)


def test_defect_12_session_has_the_builtins_lazily_and_runs_the_default_prompt(comfy_root: Path, tmp_path: Path) -> None:
    code = "import comfy_notebook, sys; comfy_notebook.Session(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    prompt = default_prompt()
    prompt["5"]["inputs"].update(width=64, height=64)  # a tiny random model: small and quick
    prompt["3"]["inputs"]["steps"] = 2
    s = Session(models_dir=comfy_root, output_dir=tmp_path / "out")
    s.options["progress"] = False
    result = s.run_prompt(prompt)
    assert result.ui["9"]["images"][0]["filename"] == "ComfyUI_00001_.png"
    assert (tmp_path / "out" / "ComfyUI_00001_.png").is_file()
    assert repr(result).startswith("<PromptResult ") and "tensor(" not in repr(result)  # defect 4
    empty = Session(builtins=False)
    assert len(empty.registry) == 0 and "KSampler" not in empty.registry


@pytest.mark.gpu
def test_defect_12_the_verbatim_default_prompt_runs(comfy_root: Path, tmp_path: Path) -> None:
    """ComfyUI's default prompt exactly as shipped (512 px, 20 steps) on the built-ins (minutes on
    a shared CPU, so it runs where there is a GPU; the test above runs it scaled down here)."""
    s = Session(models_dir=comfy_root, output_dir=tmp_path / "out")
    s.options["progress"] = False
    result = s.run_prompt(default_prompt())
    assert result.outputs["8"][0].shape == (1, 512, 512, 3)
    assert "9" in result.executed


def test_defect_2_no_models_folder_says_where_and_how(no_config: Path, comfy_root: Path, current: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    s = current(Session())
    loader = node_function("CheckpointLoaderSimple")
    with pytest.raises(NodeCallError) as info:
        loader(CKPT)
    msg = str(info.value)
    assert "no models folder is configured" in msg and str(no_config / "models" / "checkpoints") in msg
    for way in ("Session(models_dir=PATH)", "set_models_dir(PATH)", "%comfy models-dir PATH",
                "COMFY_NOTEBOOK_MODELS", "config.toml"):
        assert way in msg
    assert msg.count("Fix:") == 1 and "[]" not in msg
    assert "none configured" in control.status(s)
    # set after the first node call: the same session sees it
    monkeypatch.setenv("COMFY_NOTEBOOK_MODELS", str(comfy_root))
    model = loader(CKPT)[0]
    assert model.type == "MODEL"
    assert f"models folder: {comfy_root / 'models'}" in control.status(s)
    # and by hand, for this session only
    monkeypatch.delenv("COMFY_NOTEBOOK_MODELS")
    other = no_config / "other"
    (other / "checkpoints").mkdir(parents=True)
    control.set_models_dir(other, s)
    assert s.folders.models_dir == other and s.folders.list("checkpoints") == []


def test_defect_5_messages_have_one_fix_and_name_what_to_insert(comfy_root: Path, tmp_path: Path, current: Any) -> None:
    current(Session(models_dir=comfy_root, output_dir=tmp_path / "out"))
    model, clip, vae = node_function("CheckpointLoaderSimple")(CKPT)
    pos = node_function("CLIPTextEncode")("a cat", clip)
    image = node_function("VAEDecode")(node_function("EmptyLatentImage")(64, 64, 1), vae)
    ksampler = node_function("KSampler")
    with pytest.raises(NodeCallError) as info:
        ksampler(model, 1, 2, 8.0, "euler", "normal", pos, pos, image)  # an IMAGE as latent_image
    msg = str(info.value)
    assert "input 'latent_image'" in msg and "insert VAEEncode" in msg and msg.count("Fix:") == 1
    with pytest.raises(NodeCallError) as info:
        ksampler(model, 1, 2, 8.0, "eulr", "normal", pos, pos, node_function("EmptyLatentImage")(64, 64, 1))
    msg = str(info.value)
    assert "did you mean 'euler'" in msg and msg.count("euler_ancestral") <= 1 and msg.count("Fix:") == 1
    # the shown class is the public one; a plain script is not told about magics
    line = traceback.format_exception_only(type(info.value), info.value)[-1]
    assert line.startswith("comfy_notebook.NodeCallError: ") and "%comfy" not in line
    with pytest.raises(AttributeError, match="Did you mean KSampler"):
        comfy_notebook.nodes.KSamplr  # noqa: B018 - the lookup is the test


def test_defect_5_corrupt_checkpoint_one_fix(comfy_root: Path, tmp_path: Path, current: Any) -> None:
    bad = comfy_root / "models" / "checkpoints" / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    try:
        current(Session(models_dir=comfy_root, output_dir=tmp_path / "out"))
        with pytest.raises(NodeCallError) as info:
            node_function("CheckpointLoaderSimple")("broken.safetensors")
        msg = str(info.value)
        assert "broken.safetensors" in msg and msg.count("Fix:") == 1 and "%comfy" not in msg
    finally:
        bad.unlink()


def test_defect_10_nan_fails_validation_and_rounding_is_said(comfy_root: Path, tmp_path: Path, current: Any,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    s = current(Session(models_dir=comfy_root, output_dir=tmp_path / "out"))
    model, clip, _ = node_function("CheckpointLoaderSimple")(CKPT)
    pos = node_function("CLIPTextEncode")("a cat", clip)
    with caplog.at_level(logging.WARNING, logger="comfy_notebook"):
        events: list[Any] = []
        s.subscribe(events.append)
        latent = node_function("EmptyLatentImage")(100, 100, 1)
    assert latent.value["samples"].shape == (1, 4, 12, 12)  # ComfyUI's rounding, kept
    warned = [e for e in events if type(e).__name__ == "NodeWarning"]
    assert len(warned) == 1 and "100x100 is not a multiple of 8" in warned[0].message and "96x96" in warned[0].message
    assert any("96x96" in r.getMessage() for r in caplog.records)
    for bad in (math.nan, math.inf):
        with pytest.raises(NodeCallError) as info:
            node_function("KSampler")(model, 1, 2, bad, "euler", "normal", pos, pos, latent)
        msg = str(info.value)
        assert "input 'cfg'" in msg and "not a finite number" in msg and msg.count("Fix:") == 1
    api = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
           "2": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["1", 0], "upscale_method": "nearest-exact",
                                                              "scale_by": float("nan")}}}
    with pytest.raises(comfy_notebook.ValidationError) as vinfo:
        s.run_prompt(api, targets=["2"])
    assert vinfo.value.node_errors["2"]["errors"][0]["type"] == "value_not_finite"


def test_defect_6_load_image_names_the_input_folder(comfy_root: Path, tmp_path: Path, current: Any) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(comfy_root / "input" / "cat.png")
    current(Session(models_dir=comfy_root, output_dir=tmp_path / "out"))
    with pytest.raises(NodeCallError) as info:
        node_function("LoadImage")("cta.png")
    msg = str(info.value)
    assert str(comfy_root / "input") in msg and "cat.png" in msg and msg.count("Fix:") == 1
    with pytest.raises(NodeCallError) as info:
        node_function("LoadImage")(str(tmp_path / "photo.png"))
    assert "e.g. 'photo.png'" in str(info.value) and "safetensors" not in str(info.value)


def test_defect_4_reprs_are_short(comfy_root: Path, tmp_path: Path, current: Any) -> None:
    s = current(Session(models_dir=comfy_root, output_dir=tmp_path / "out"))
    assert repr(s).startswith("<Session ") and len(repr(s)) < 100
    latent = node_function("EmptyLatentImage")(64, 64, 1)
    assert len(repr(latent)) < 120 and "tensor(" not in repr(latent)
