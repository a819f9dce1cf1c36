"""Runs notebooks/01_quickstart.ipynb on a real kernel (nbclient) with the tiny checkpoint.

Asserts the promises of real mode end to end: a second run of the generation cell executes no
node; changing the seed executes exactly KSampler, VAEDecode and SaveImage; after
``%comfy unload all`` (and after clearing the cache, which forces a reload) the image is
identical.
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
    gen_index = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "KSampler(" in c.source)
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
        for index, cell in enumerate(original):
            if cell.cell_type == "code":
                if index == gen_index:
                    run(PROBE_SETUP)
                client.execute_cell(cell, index)
        gen = original[gen_index]
        assert any("image/png" in o.get("data", {}) for o in gen.outputs), "the image is not shown inline"
        assert (tmp_path / "bottle.json").exists()
        exported = json.loads((tmp_path / "bottle.json").read_text())
        assert {n["class_type"] for n in exported.values()} >= {"KSampler", "SaveImage", "VAEDecode"}
        first_run = ran()
        assert sorted(first_run) == sorted(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode",
                                            "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage"])
        before = image_fingerprint()

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
