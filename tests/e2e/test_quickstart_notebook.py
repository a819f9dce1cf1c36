"""Runs notebooks/01_quickstart.ipynb on a real kernel (nbclient) with the tiny checkpoint.

Asserts the promises of real mode end to end: a second run of the generation cell executes no
node; changing the seed executes exactly KSampler, VAEDecode and SaveImage; the gallery cell samples a
batch of four (loader and encoders cached) and shows four different images; after ``%comfy unload all``
(and after clearing the cache, which forces a reload) the image is identical.

Cells are found by their tags (``generate``, ``export``, ``gallery``, ``models``, ``unload``), so
the notebook's prose can change without breaking the test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "01_quickstart.ipynb"

PROBE_SETUP = """
import comfy_notebook
_ran = []
comfy_notebook.session().subscribe(
    lambda e: _ran.append(e.class_type) if type(e).__name__ == "NodeStarted" else None)
"""
PROBE_READ = "print('RAN', sorted(_ran)); _ran.clear()"
PROBE_IMAGE = "import numpy as _np; print('IMG', repr(_np.asarray(image.value).round(6).ravel()[:64].tolist()), float(image.value.sum()))"


def _text(cell: Any) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append(o.get("text", ""))
        elif "data" in o and "text/plain" in o["data"]:
            out.append(o["data"]["text/plain"])
    return "".join(out)


@pytest.mark.slow
def test_quickstart_notebook(tmp_path, monkeypatch):
    from comfy_notebook.testing import make_checkpoint

    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    make_checkpoint(models / "checkpoints" / "tiny.safetensors")
    monkeypatch.setenv("COMFY_NOTEBOOK_MODELS", str(models))
    monkeypatch.setenv("COMFY_NOTEBOOK_PROGRESS", "0")
    monkeypatch.setenv("QUICKSTART_SIZE", "64")  # the tiny model on 2 CPU cores
    monkeypatch.setenv("QUICKSTART_STEPS", "4")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = {tag: i for i, c in enumerate(nb.cells) for tag in c.metadata.get("tags", [])}
    assert {"generate", "export", "gallery", "models", "unload"} <= tagged.keys(), tagged
    gen_index = tagged["generate"]
    assert "KSampler(" in nb.cells[gen_index].source
    # the order a reader meets them: the gallery and the model panel come before unloading
    assert gen_index < tagged["export"] < tagged["gallery"] < tagged["models"] < tagged["unload"]
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})

    def run(source: str) -> str:
        cell = nbformat.v4.new_code_cell(source)
        nb.cells.append(cell)
        client.execute_cell(cell, len(nb.cells) - 1)
        return _text(cell)

    def ran() -> list[str]:
        match = re.search(r"RAN (\[.*\])", run(PROBE_READ))
        assert match, "probe printed nothing"
        return json.loads(match.group(1).replace("'", '"'))

    def image_fingerprint() -> str:
        return run(PROBE_IMAGE)

    with client.setup_kernel():
        original = list(nb.cells)
        per_cell: dict[int, list[str]] = {}
        for index, cell in enumerate(original):
            if cell.cell_type == "code":
                if index == gen_index:
                    run(PROBE_SETUP)
                client.execute_cell(cell, index)
                if index >= gen_index:
                    per_cell[index] = ran()
                if index == gen_index:
                    first_image = image_fingerprint()
        gen = original[gen_index]
        assert any("image/png" in o.get("data", {}) for o in gen.outputs), "the image is not shown inline"
        assert (tmp_path / "bottle.json").exists()
        exported = json.loads((tmp_path / "bottle.json").read_text())
        assert {n["class_type"] for n in exported.values()} >= {"KSampler", "SaveImage", "VAEDecode"}
        assert sorted(per_cell[gen_index]) == sorted([
            "CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
            "KSampler", "VAEDecode", "SaveImage"])

        # the gallery: a batch of four, sampled and decoded (loader and encoders cached)
        assert per_cell[tagged["gallery"]] == ["EmptyLatentImage", "KSampler", "VAEDecode"]
        gallery_out = original[tagged["gallery"]].outputs
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   for o in gallery_out), "the gallery is not shown as a widget"
        gallery_text = _text(original[tagged["gallery"]])
        assert "Gallery: 4 image(s) in 1 run(s)" in gallery_text, gallery_text
        for i in range(4):
            assert re.search(rf"\[{i}\] seed 42, a batch of 4: 64x64 seed=42 steps=4 cfg=8.0 "
                             r"sampler=euler scheduler=normal checkpoint=tiny.safetensors",
                             gallery_text), gallery_text
        distinct = run("_g = [gallery.image(i) for i in range(4)]; "
                       "print('GALLERY', {x.shape for x in _g}, len({x.tobytes() for x in _g}), "
                       "{str(x.dtype) for x in _g})")
        assert "GALLERY {(64, 64, 3)} 4 {'uint8'}" in distinct, distinct

        # the model panel: the checkpoint's three models, on the CPU (no CUDA, no simulation)
        panel = _text(original[tagged["models"]])
        for part in ("unet", "vae", "clip"):
            assert re.search(rf"tiny/{part}\s+sd1\s+float32\s+[\d.]+ MB\s+-\s+cpu", panel), panel
        assert per_cell[tagged["models"]] == [] and per_cell[tagged["unload"]] == []
        locations = run("print('LOC', sorted((i.name, i.location) for i in session.models.list()))")
        assert ("LOC [('tiny/clip', 'unloaded'), ('tiny/unet', 'unloaded'), ('tiny/vae', 'unloaded')]"
                in locations), locations

        client.execute_cell(gen, gen_index)  # cached results survive unloading: nothing runs
        assert ran() == []
        before = image_fingerprint()
        assert before == first_image

        client.execute_cell(gen, gen_index)  # second run: nothing executes
        assert ran() == []

        gen.source = gen.source.replace("seed = 42", "seed = 7")
        client.execute_cell(gen, gen_index)
        assert ran() == ["KSampler", "SaveImage", "VAEDecode"]
        assert image_fingerprint() != before

        gen.source = gen.source.replace("seed = 7", "seed = 42")
        run("%comfy unload all")
        client.execute_cell(gen, gen_index)
        assert image_fingerprint() == before

        run("%comfy unload all\n%comfy cache clear")  # now everything recomputes, models reload
        client.execute_cell(gen, gen_index)
        assert len(ran()) == 7
        assert image_fingerprint() == before
        assert list((tmp_path / "output").glob("bottle_*.png")) or list(tmp_path.rglob("bottle_*.png"))
