"""Run by test_attach.py in a fresh interpreter (attaching ComfyUI changes process-wide state).

argv: COMFYUI_ROOT WORK_DIR.  Prints one JSON line with what the test asserts.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

from comfy_notebook import Session, use_session
from comfy_notebook.nodes import register_builtins
from comfy_notebook.testing import make_checkpoint

root, work = Path(sys.argv[1]), Path(sys.argv[2])
models = work / "models"
make_checkpoint(models / "checkpoints" / "tiny.safetensors", "sd1-comfyui")

prompt = json.loads((Path(__file__).parents[2] / "comfy_notebook" / "data"
                     / "default_txt2img_api.json").read_text())
prompt["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
prompt["5"]["inputs"].update(width=64, height=64)
prompt["3"]["inputs"].update(steps=3, seed=5)

# Our built-in nodes on the same file: the reference image.
builtin = Session(models_dir=models, output_dir=work / "out_builtin")
register_builtins(builtin)
reference = builtin.run_prompt(prompt).outputs["8"][0]

out: dict = {}
session = Session(models_dir=models, output_dir=work / "out_comfyui")
register_builtins(session)
state = session.attach_comfyui(root)
out["nodes"] = len(state.names)
out["ksampler_is_comfyui"] = session.registry["KSampler"].cls.__module__ == "nodes"
events = []
session.subscribe(events.append)
first = session.run_prompt(prompt)
out["first_executed"] = sorted(first.executed)
out["progress_steps"] = sum(type(e).__name__ == "NodeProgress" for e in events)
image = first.outputs["8"][0]
out["image_shape"] = list(image.shape)
out["max_abs_diff_vs_builtin"] = float((image - reference).abs().max())
out["rerun_executed"] = sorted(session.run_prompt(prompt).executed)
changed = copy.deepcopy(prompt)
changed["3"]["inputs"]["seed"] = 6
out["seed_change_executed"] = sorted(session.run_prompt(changed).executed)
mm = state.model_management
out["loaded_before_unload"] = len(mm.current_loaded_models)
rows = [r for r in session.models.list() if r.world == "comfyui"]
out["panel_rows_comfyui"] = len(rows)
from comfy_notebook.widgets.model_panel import ModelPanel  # noqa: E402

out["panel_says_comfyui"] = "[comfyui]" in ModelPanel(session.models).text()
session.models.unload_all()
out["loaded_after_unload"] = len(mm.current_loaded_models)
import folder_paths  # noqa: E402 - ComfyUI's, now that it is attached

out["output_dir"] = folder_paths.get_output_directory()
out["saved"] = sorted(p.name for p in (work / "out_comfyui").rglob("*.png"))

# Real mode with ComfyUI's own classes, on the same cache.
use_session(session)
from comfy_notebook.realmode import node_function  # noqa: E402

model, clip, vae = node_function("CheckpointLoaderSimple")("tiny.safetensors")
out["realmode_model_type"] = type(model.value).__name__
pos = node_function("CLIPTextEncode")(prompt["6"]["inputs"]["text"], clip)
neg = node_function("CLIPTextEncode")(prompt["7"]["inputs"]["text"], clip)
latent = node_function("EmptyLatentImage")(64, 64, 1)
sampled = node_function("KSampler")(model, 5, 3, 8.0, "euler", "normal", pos, neg, latent)
decoded = node_function("VAEDecode")(sampled, vae)
out["realmode_equals_prompt"] = bool(torch.equal(decoded.value, image))

try:
    session.attach_comfyui(root)
except Exception as exc:
    out["second_attach"] = f"{type(exc).__name__}: {exc}"
print("RESULT " + json.dumps(out))
