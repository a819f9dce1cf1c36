"""Cells of notebooks/07_model_families.ipynb (built by make_notebooks.py)."""

from __future__ import annotations

from nbformat.v4 import new_code_cell, new_markdown_cell

SETUP = """\
import dataclasses
import os
from pathlib import Path

import torch

import comfy_notebook
from comfy_notebook.nodes import register_builtins
from comfy_notebook.runtime.devices import DevicePolicy
from comfy_notebook.runtime.manager import ModelManager

MODELS_DIR = os.environ.get("COMFY_NOTEBOOK_MODELS")  # your ComfyUI models folder, or None
# ComfyUI's standard file names (its examples and templates use these)
SDXL = "sd_xl_base_1.0.safetensors"  # checkpoints/
FLUX, T5, CLIP_L, AE = ("flux1-dev.safetensors", "t5xxl_fp16.safetensors",  # diffusion_models/, text_encoders/
                        "clip_l.safetensors", "ae.safetensors")  # text_encoders/, vae/ (Flux's VAE)
ZIMAGE, QWEN3 = "z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors"
QWEN_IMAGE, QWEN_EDIT = "qwen_image_fp8_e4m3fn.safetensors", "qwen_image_edit_2509_fp8_e4m3fn.safetensors"
QWEN_VL, QWEN_VAE = "qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image_vae.safetensors"
SIZE, STEPS = 1024, 20
TINY = not MODELS_DIR
if TINY:  # no models folder: tiny random-weight files in the released key layouts, same names
    from comfy_notebook import testing
    from comfy_notebook.models import qwen25vl
    from comfy_notebook.models.vae import VAEConfig

    # Qwen2.5-VL text model and vision tower, as wide as the tiny Qwen-Image's context, real vocabulary
    QWEN_VL_TINY = dataclasses.replace(qwen25vl.Qwen25VLConfig.tiny(), vocab_size=152064,
                                       image_token_id=qwen25vl.IMAGE_PAD_ID)

    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    MODELS_DIR = cache_home / "comfy_notebook" / "notebooks" / "tiny-family-models"
    writers = {
        f"checkpoints/{SDXL}": lambda p: testing.make_checkpoint(p, preset="sdxl"),
        f"diffusion_models/{FLUX}": lambda p: testing.make_flux_file(p, "flux-dev-tiny"),
        f"text_encoders/{T5}": testing.make_t5_file,
        f"text_encoders/{CLIP_L}": testing.make_text_encoder_file,  # CLIP-L, transformers' layout
        f"vae/{AE}": lambda p: testing.make_vae_file(p, config=VAEConfig.flux_tiny()),
        f"diffusion_models/{ZIMAGE}": testing.make_zimage_file,
        f"text_encoders/{QWEN3}": testing.make_qwen3_file,
        f"diffusion_models/{QWEN_IMAGE}": lambda p: testing.make_qwen_image_file(
            p, "qwen-image-tiny", dtype=torch.float8_e4m3fn),
        f"diffusion_models/{QWEN_EDIT}": lambda p: testing.make_qwen_image_file(
            p, "qwen-image-edit-tiny", dtype=torch.float8_e4m3fn),
        f"text_encoders/{QWEN_VL}": lambda p: testing.make_qwen25vl_file(p, config=QWEN_VL_TINY),
        f"vae/{QWEN_VAE}": testing.make_wan_vae_file,  # the Wan 2.1 VAE
    }
    for name, write in writers.items():
        path = Path(MODELS_DIR) / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
    SIZE, STEPS = 64, 3

session = comfy_notebook.use_session(comfy_notebook.Session(models_dir=MODELS_DIR, output_dir="output"))
register_builtins(session)
SIMULATED_GPU = not torch.cuda.is_available()
if SIMULATED_GPU:  # accounting mode: a simulated 4 GB GPU, as in notebook 03
    session.services.models = ModelManager(DevicePolicy.cpu(), capacity_bytes=4 << 30)
print(f"models: {MODELS_DIR}\\n{'tiny random-weight files: the images are noise' if TINY else 'real files'}, "
      f"{SIZE} px, {STEPS} steps | simulated GPU: {SIMULATED_GPU}")"""

RAN = """\
from comfy_notebook.engine.events import NodeStarted
from comfy_notebook.widgets import ModelPanel

ran = []
session.subscribe(lambda event: ran.append(event.class_type) if isinstance(event, NodeStarted) else None)


def show_ran():
    print("ran:", sorted(ran))
    ran.clear()


def show(label, image):
    print(f"{label}: {tuple(image.value.shape)}, finite: {bool(torch.isfinite(image.value).all())}")


panel = ModelPanel(session.models, cache=session.cache)  # live: it records every move from now on"""

SDXL_CELL = """\
model, clip, vae = CheckpointLoaderSimple(SDXL)
positive = CLIPTextEncode("a lighthouse on a cliff at dusk, oil painting", clip)
negative = CLIPTextEncode("text, watermark", clip)
latent = KSampler(model, 42, STEPS, 7.0, "euler", "normal", positive, negative,
                  EmptyLatentImage(SIZE, SIZE, 1))
sdxl_image = VAEDecode(latent, vae)
print("family:", model.value.family.name)
show("SDXL", sdxl_image)
show_ran()
sdxl_image"""

FLUX_CELL = """\
import math

from safetensors import safe_open

FLUX_TEXT = "a glass bottle with a purple galaxy inside, on a wooden table"


def flux_txt2img(seed, text):
    \"\"\"ComfyUI's Flux dev custom-sampling graph, one real-mode call per node.\"\"\"
    flux = UNETLoader(FLUX, "fp8_e4m3fn")  # weights stored as fp8, computed in the compute dtype
    clip = DualCLIPLoader(T5, CLIP_L, "flux")
    guided = FluxGuidance(CLIPTextEncode(text, clip), 3.5)  # distilled guidance: no negative, no CFG
    shifted = ModelSamplingFlux(flux, 1.15, 0.5, SIZE, SIZE)  # the resolution-dependent shift
    latent, _ = SamplerCustomAdvanced(RandomNoise(seed), BasicGuider(shifted, guided), KSamplerSelect("euler"),
                                      BasicScheduler(shifted, "simple", STEPS, 1.0),
                                      EmptySD3LatentImage(SIZE, SIZE, 1))
    return VAEDecode(latent, VAELoader(AE)), flux


flux_image, flux = flux_txt2img(42, FLUX_TEXT)
unet = next(i for i in session.models.list() if i.name.endswith("@fp8_e4m3fn/unet"))  # cast to fp8 on load
with safe_open(Path(MODELS_DIR) / "diffusion_models" / FLUX, "pt") as f:
    names = f.keys()  # a safetensors file handle, not a dict
    parameters = sum(math.prod(f.get_slice(k).get_shape()) for k in names)
print("family:", flux.value.family.name, "|", unet.name, "holds", unet.bytes / parameters, "bytes a parameter")
show("Flux", flux_image)
show_ran()
flux_image"""

ZIMAGE_CELL = """\
zimage = ModelSamplingAuraFlow(UNETLoader(ZIMAGE, "default"), 3.0)
qwen3 = CLIPLoader(QWEN3, "lumina2")
text = CLIPTextEncode("a red fox in the snow, 雪中的红狐狸", qwen3)
zimage_latent = KSampler(zimage, 42, STEPS if TINY else 8, 1.0, "res_multistep", "simple", text,
                         ConditioningZeroOut(text), EmptySD3LatentImage(SIZE, SIZE, 1))
zimage_image = VAEDecode(zimage_latent, VAELoader(AE))  # the Flux VAE: a cache hit after the Flux cell
print("family:", zimage.value.family.name)
show("Z-Image-Turbo", zimage_image)
show_ran()
zimage_image"""

QWEN_CELL = """\
qwen_vl = CLIPLoader(QWEN_VL, "qwen_image")
wan_vae = VAELoader(QWEN_VAE)
qwen = ModelSamplingAuraFlow(UNETLoader(QWEN_IMAGE, "default"), 3.1)
positive = CLIPTextEncode("a cozy reading nook with a cat, warm light", qwen_vl)
negative = CLIPTextEncode("", qwen_vl)
qwen_latent = KSampler(qwen, 42, STEPS, 2.5, "euler", "simple", positive, negative,
                       EmptySD3LatentImage(SIZE, SIZE, 1))
qwen_image = VAEDecode(qwen_latent, wan_vae)
print("family:", qwen.value.family.name)
show("Qwen-Image", qwen_image)
show_ran()
qwen_image"""

EDIT_CELL = """\
edit = ModelSamplingAuraFlow(UNETLoader(QWEN_EDIT, "default"), 3.1)
instruction = "make the bottle blue and add snow on the table"
positive = TextEncodeQwenImageEditPlus(qwen_vl, instruction, wan_vae, flux_image)
negative = TextEncodeQwenImageEditPlus(qwen_vl, "", wan_vae, flux_image)
references = positive.value[0][1].get("reference_latents", [])
print("reference latents:", [tuple(r.shape) for r in references])
edited = VAEDecode(KSampler(edit, 42, STEPS, 4.0, "euler", "simple", positive, negative,
                            EmptySD3LatentImage(SIZE, SIZE, 1)), wan_vae)
show("Qwen-Image-Edit", edited)
show_ran()
edited"""

GRID_CELL = """\
%matplotlib inline
from comfy_notebook import plot

families = {"SDXL": sdxl_image, "Flux.1 dev (fp8)": flux_image, "Z-Image-Turbo": zimage_image,
            "Qwen-Image": qwen_image, "Qwen-Image-Edit": edited}
plot.grid(list(families.values()), titles=list(families), cols=len(families))"""

TABLE_CELL = """\
print(panel.text())"""

BUDGET_CELL = """\
# tiny files: 1 MB, under each Flux text encoder and the VAE; real files: 6 GB, about half the fp8
# Flux transformer (~12 GB) and well under T5-XXL (~9 GB)
budget = 1 << 20 if TINY else 6 << 30
reference = flux_image.value.clone()
session.models.unload_all()
session.models.set_budget(budget)
panel.moves = []  # show this run's plan only
session.cache.clear()  # the nodes really run again
before = session.models.stats.partial_loads
flux_image, _ = flux_txt2img(42, FLUX_TEXT)
print(f"budget: {budget} bytes | partial loads: {session.models.stats.partial_loads - before}")
print("identical under the budget:", torch.equal(flux_image.value, reference))
print(panel.text())
session.models.set_budget(None)"""

def cells(preamble_md: str) -> list:
    return [
        new_markdown_cell(f"""\
# Model families: SDXL, Flux.1, Z-Image-Turbo, Qwen-Image

One session, four families, each built cell by cell in real mode with ComfyUI's own nodes and
graphs: an SDXL checkpoint; Flux.1 dev from separate files (`UNETLoader` with fp8 weights,
`DualCLIPLoader` type `flux`, `VAELoader`) through the custom-sampling graph
(`SamplerCustomAdvanced` with `FluxGuidance`); Z-Image-Turbo (`CLIPLoader` type `lumina2`,
`ModelSamplingAuraFlow` shift 3, `KSampler`); Qwen-Image and Qwen-Image-Edit-2509 (`CLIPLoader`
type `qwen_image`, the Wan VAE, `TextEncodeQwenImageEditPlus` editing the Flux image). The model
manager moves them all through one device; the model panel lists the latest moves, and a
small budget shows the memory plan of a partial load.

{preamble_md}"""),
        new_code_cell("%load_ext comfy_notebook"),
        new_code_cell(SETUP),
        new_code_cell("from comfy_notebook.nodes import *  # every registered node, real mode"),
        new_code_cell(RAN),
        new_markdown_cell("""\
## SDXL: one checkpoint
`CheckpointLoaderSimple` reads SDXL's two text encoders (CLIP-L and OpenCLIP bigG), its UNet
and VAE from one file; the graph is ComfyUI's default one."""),
        new_code_cell(SDXL_CELL),
        new_markdown_cell("""\
## Flux.1 dev: separate files, the custom-sampling graph
The transformer comes from `diffusion_models/` (here cast to fp8 on load: `weight_dtype`
`fp8_e4m3fn` halves its memory), T5-XXL and CLIP-L from `text_encoders/`, the 16-channel VAE
from `vae/`. Flux dev is guidance-distilled: `FluxGuidance` sets the guidance the model is
conditioned on, and `BasicGuider` runs one model call a step."""),
        new_code_cell(FLUX_CELL),
        new_markdown_cell("""\
## Z-Image-Turbo
A Qwen3 text encoder (`CLIPLoader` type `lumina2`), the Flux VAE (loaded above: a cache hit), the
flow shift of ComfyUI's template (`ModelSamplingAuraFlow` 3) and `KSampler` at cfg 1 with
`res_multistep` (8 steps with real files)."""),
        new_code_cell(ZIMAGE_CELL),
        new_markdown_cell("""\
## Qwen-Image
Qwen2.5-VL as the text encoder (`CLIPLoader` type `qwen_image`) and the Wan 2.1 VAE
(`qwen_image_vae.safetensors`)."""),
        new_code_cell(QWEN_CELL),
        new_markdown_cell("""\
## Qwen-Image-Edit-2509: an instruction and an input image
`TextEncodeQwenImageEditPlus` shows the image to the vision tower with the prompt and, given
the VAE, adds its latent to the conditioning as a reference the transformer attends to. The
input here is the Flux image from above."""),
        new_code_cell(EDIT_CELL),
        new_markdown_cell("The five images side by side (`comfy_notebook.plot.grid`)."),
        new_code_cell(GRID_CELL),
        new_markdown_cell("""\
## The model panel
One row per model part, with its family, storage dtype and location; the memory plan below the
table lists the latest moves (loads, offloads, evictions) with their reasons."""),
        new_code_cell(TABLE_CELL),
        new_markdown_cell("""\
## Flux under a small budget
`set_budget` caps what the models may hold on the device. Below the size of each model, every
one runs partially loaded in turn: the blocks that fit stay on the device, the rest stream in
each step. The plan says how much stays and how much streams; the image does not change. The
budget also covers the memory a step needs, so a model smaller than the budget may still keep
nothing resident and stream all of its weights."""),
        new_code_cell(BUDGET_CELL),
        new_code_cell("panel  # the live widget (its text form without a widget frontend)"),
    ]
