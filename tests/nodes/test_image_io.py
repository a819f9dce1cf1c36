"""LoadImage / LoadImageMask / SaveImage / PreviewImage: files, masks, names, PNG metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import comfy_notebook
from comfy_notebook._session import Session, use_session
from comfy_notebook.folders import Folders
from comfy_notebook.nodes.image import NODE_CLASS_MAPPINGS as IMAGE_NODES
from comfy_notebook.nodes.image_io import (
    NODE_CLASS_MAPPINGS,
    LoadImage,
    LoadImageMask,
    PreviewImage,
    SaveImage,
)
from comfy_notebook.pnginfo import read_prompt, read_workflow, workflow_to_api


@pytest.fixture
def session(tmp_path: Path) -> Session:
    """A session whose folders live in tmp_path, made current for naked calls."""
    s = Session(models_dir=tmp_path / "models", output_dir=tmp_path / "output")
    s.services.folders = Folders(
        tmp_path / "models",
        output_dir=tmp_path / "output",
        input_dir=tmp_path / "input",
        temp_dir=tmp_path / "temp",
    )
    (tmp_path / "input").mkdir()
    s.register(NODE_CLASS_MAPPINGS)
    s.register(IMAGE_NODES)
    use_session(s)
    return s


def _rgba(h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)


def test_load_image_rgba_and_mask(session: Session, tmp_path: Path) -> None:
    arr = _rgba()
    Image.fromarray(arr, "RGBA").save(tmp_path / "input" / "a.png")
    image, mask = LoadImage().load_image("a.png")
    assert image.shape == (1, 6, 5, 3) and image.dtype == torch.float32
    torch.testing.assert_close(image[0], torch.from_numpy(arr[..., :3] / 255.0).float())
    torch.testing.assert_close(mask[0], torch.from_numpy(1.0 - arr[..., 3] / 255.0).float())


def test_load_image_without_alpha_gives_64x64_zero_mask(session: Session, tmp_path: Path) -> None:
    Image.fromarray(_rgba()[..., :3], "RGB").save(tmp_path / "input" / "rgb.png")
    image, mask = LoadImage().load_image("rgb.png")
    assert image.shape == (1, 6, 5, 3)
    assert mask.shape == (1, 64, 64) and torch.count_nonzero(mask) == 0


def test_load_image_frames_and_exif(session: Session, tmp_path: Path) -> None:
    frames = [Image.fromarray(_rgba(seed=k)[..., :3], "RGB") for k in range(3)]
    frames[0].save(tmp_path / "input" / "anim.gif", save_all=True, append_images=frames[1:])
    image, mask = LoadImage().load_image("anim.gif")
    assert image.shape == (3, 6, 5, 3) and mask.shape == (3, 64, 64)
    # frames of another size are skipped (multi-page TIFF)
    pages = [frames[0], Image.new("RGB", (3, 3)), frames[2]]
    pages[0].save(tmp_path / "input" / "pages.tiff", save_all=True, append_images=pages[1:])
    assert LoadImage().load_image("pages.tiff")[0].shape == (2, 6, 5, 3)
    # EXIF orientation 6 (rotate 90 clockwise) is applied
    exif = Image.Exif()
    exif[0x0112] = 6
    frames[1].save(tmp_path / "input" / "rot.png", exif=exif)
    image, _ = LoadImage().load_image("rot.png")
    assert image.shape == (1, 5, 6, 3)
    with Image.open(tmp_path / "input" / "rot.png") as opened:
        ref = np.asarray(ImageOps.exif_transpose(opened).convert("RGB")) / 255.0
    np.testing.assert_allclose(image[0].numpy(), ref, atol=1e-6)


def test_load_image_combo_hash_and_validation(session: Session, tmp_path: Path) -> None:
    Image.fromarray(_rgba(), "RGBA").save(tmp_path / "input" / "photo.png")
    (tmp_path / "input" / "notes.txt").write_text("not an image")
    assert LoadImage.VALIDATE_INPUTS("photo.png") is True
    msg = LoadImage.VALIDATE_INPUTS("phot.png")
    assert isinstance(msg, str)
    assert msg.startswith(f"Invalid image file: input image 'phot.png' is not in the input folder {tmp_path / 'input'}")
    assert "files there: ['photo.png']" in msg and "notes.txt" not in msg  # images, close matches first
    assert msg.count("Fix:") == 1 and "(closest: 'photo.png')" in msg
    absolute = LoadImage.VALIDATE_INPUTS(str(tmp_path / "elsewhere.png"))
    assert isinstance(absolute, str) and "e.g. 'photo.png'" in absolute and "safetensors" not in absolute
    escape = LoadImage.VALIDATE_INPUTS("../output/x.png")
    assert isinstance(escape, str) and ".." in escape
    h1 = LoadImage.IS_CHANGED("photo.png")
    Image.fromarray(_rgba(seed=9), "RGBA").save(tmp_path / "input" / "photo.png")
    assert LoadImage.IS_CHANGED("photo.png") != h1
    # inside a run the combo lists the session's input folder (images only)
    result = session.run_prompt(
        {"1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}
    )
    assert result.ui["2"]["images"][0]["filename"] == "t_00001_.png"
    from comfy_notebook.folders import folders_service

    assert folders_service(session.services).list("input") == ["photo.png"]


def test_load_image_mask_channels(session: Session, tmp_path: Path) -> None:
    arr = _rgba()
    Image.fromarray(arr, "RGBA").save(tmp_path / "input" / "m.png")
    for k, channel in enumerate(["red", "green", "blue"]):
        (mask,) = LoadImageMask().load_image("m.png", channel)
        assert mask.shape == (1, 6, 5)
        torch.testing.assert_close(mask[0], torch.from_numpy(arr[..., k] / 255.0).float())
    (alpha,) = LoadImageMask().load_image("m.png", "alpha")
    torch.testing.assert_close(alpha[0], torch.from_numpy(1.0 - arr[..., 3] / 255.0).float())
    Image.fromarray(arr[..., :3], "RGB").save(tmp_path / "input" / "rgb.png")
    (opaque,) = LoadImageMask().load_image("rgb.png", "alpha")
    assert opaque.shape == (1, 6, 5) and torch.count_nonzero(opaque) == 0


def test_save_image_through_session_writes_prompt_and_workflow(
    session: Session, tmp_path: Path
) -> None:
    api = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 2,
                                                     "color": 0x336699},
              "_meta": {"title": "EmptyImage"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                    "filename_prefix": "runs/%width%x%height%"},
              "_meta": {"title": "Save Image"}},
    }
    result = session.run_prompt(api, extra_data={"extra_pnginfo": {"note": {"by": "test"}}})
    images = result.ui["2"]["images"]
    assert images == [
        {"filename": "8x4_00001_.png", "subfolder": "runs", "type": "output"},
        {"filename": "8x4_00002_.png", "subfolder": "runs", "type": "output"},
    ]
    path = tmp_path / "output" / "runs" / "8x4_00002_.png"
    assert read_prompt(path) == api  # the exact prompt
    with Image.open(path) as img:
        assert img.size == (8, 4)
        assert json.loads(img.text["note"]) == {"by": "test"}
        assert list(img.text)[:1] == ["prompt"]
        pixel = np.asarray(img)[0, 0]
    # ComfyUI truncates 255 * value to uint8
    expect = [int(255.0 * np.float32(v / 255)) for v in (0x33, 0x66, 0x99)]
    assert pixel.tolist() == expect
    workflow = read_workflow(path)
    assert workflow_to_api(workflow, session.registry) == api


def test_save_image_naked_never_overwrites(session: Session, tmp_path: Path) -> None:
    out = SaveImage().save_images(torch.rand(1, 3, 3, 3), "x")
    assert out["ui"]["images"][0]["filename"] == "x_00001_.png"
    with Image.open(tmp_path / "output" / "x_00001_.png") as img:
        assert "prompt" not in img.text  # no prompt outside a run, as in ComfyUI

    class StaleFolders(Folders):
        def save_path(self, prefix, width=0, height=0, kind="output"):  # type: ignore[no-untyped-def]
            full, name, _counter, sub = super().save_path(prefix, width, height, kind)
            return full, name, 1, sub  # pretend we did not see the existing file

    session.services.folders = StaleFolders(
        tmp_path / "models", output_dir=tmp_path / "output", temp_dir=tmp_path / "temp"
    )
    before = (tmp_path / "output" / "x_00001_.png").read_bytes()
    out = SaveImage().save_images(torch.rand(1, 3, 3, 3), "x")
    assert out["ui"]["images"][0]["filename"] == "x_00002_.png"
    assert (tmp_path / "output" / "x_00001_.png").read_bytes() == before
    with pytest.raises(comfy_notebook.errors.ComfyNotebookError):
        SaveImage().save_images(torch.rand(1, 3, 3, 3), "../../evil")


def test_preview_image_goes_to_temp(session: Session, tmp_path: Path) -> None:
    node = PreviewImage()
    assert node.compress_level == 1 and node.prefix_append.startswith("_temp_")
    out = node.save_images(torch.rand(1, 4, 4, 3))
    (entry,) = out["ui"]["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    assert (tmp_path / "temp" / entry["filename"]).is_file()
    assert not (tmp_path / "output").exists() or not list((tmp_path / "output").iterdir())
    assert "filename_prefix" not in PreviewImage.INPUT_TYPES()["required"]
    assert SaveImage.OUTPUT_NODE and PreviewImage.OUTPUT_NODE
