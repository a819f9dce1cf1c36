"""Defect 1: an output node without outputs (SaveImage, PreviewImage) displays what it saved."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

import comfy_notebook
from comfy_notebook.realmode import node_function


@pytest.fixture
def session(tmp_path):
    previous = comfy_notebook._session._current
    (tmp_path / "models").mkdir()  # a ComfyUI-style root: temp/ and input/ stay under tmp_path
    s = comfy_notebook.use_session(comfy_notebook.Session(models_dir=tmp_path, output_dir=tmp_path / "out"))
    s.options = {"progress": False}
    yield s
    comfy_notebook._session._current = previous


def test_save_image_handle_reprs_and_shows_the_saved_image(session, tmp_path):
    image = torch.zeros(1, 8, 8, 3)
    image[..., 0] = 1.0  # red
    saved = node_function("SaveImage")(image, "bottle")
    assert saved.type == "UI"
    text = repr(saved)
    assert text.startswith("<SaveImage: saved 1 image (bottle_00001_.png) in ") and str(tmp_path / "out") in text
    assert str(saved) == text  # print() goes through the same path
    bundle = saved._repr_mimebundle_()
    assert bundle["text/plain"] == text
    png = Image.open(io.BytesIO(bundle["image/png"]))
    assert png.size == (8, 8) and png.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    assert saved._repr_png_() == bundle["image/png"]
    assert saved.files == ((tmp_path / "out" / "bottle_00001_.png"),)


def test_preview_image_handle_and_batch(session):
    shown = node_function("PreviewImage")(torch.rand(2, 4, 6, 3))
    assert repr(shown).startswith("<PreviewImage: showed 2 images (")
    png = Image.open(io.BytesIO(shown._repr_png_()))
    assert png.size == (12, 4)  # a 2x1 grid of 6x4 images


def test_ui_handle_without_images_reprs_cleanly(session):
    class Note:
        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {"default": ""})}}

        def run(self, text):
            return {"ui": {"text": [text]}}

    session.register({"Note": Note})
    handle = node_function("Note")("hi")
    assert repr(handle) == "<Note: ui text>" and handle._repr_png_() is None
    assert handle._repr_mimebundle_() == {"text/plain": "<Note: ui text>"}
