"""Image files: LoadImage, LoadImageMask, SaveImage, PreviewImage (ComfyUI names and behaviour).

Files live in the session's folders (``comfy_notebook.folders.folders_service``): images are
loaded from the input folder, saved to the output folder (``prefix_00001_.png``, never
overwriting) or, for previews, to the temp folder.  Saved PNGs carry ComfyUI's ``prompt`` and
``workflow`` text chunks, so ComfyUI's web UI opens them and ``comfy_notebook.read_prompt``
gives the prompt back.  Reference: ComfyUI ``nodes.py`` (LoadImage, SaveImage, PreviewImage).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from comfy_notebook.errors import NodeError, OutputWriteError
from comfy_notebook.folders import FolderError, Folders, PathEscapeError, folders_service
from comfy_notebook.nodes._services import listing, services
from comfy_notebook.pnginfo import png_text_chunks

__all__ = [
    "NODE_CLASS_MAPPINGS",
    "NODE_DISPLAY_NAME_MAPPINGS",
    "LoadImage",
    "LoadImageMask",
    "PreviewImage",
    "SaveImage",
    "load_image_file",
    "write_png",
]

_ANNOTATIONS = {" [input]": "input", " [output]": "output", " [temp]": "temp"}


def _folders() -> Folders:
    """The session's folders (see ``folders_service``)."""
    return folders_service(services())


def _annotated(name: str) -> tuple[str, str]:
    """Split ComfyUI's ``"file.png [output]"`` annotation into (name, folder kind)."""
    for suffix, kind in _ANNOTATIONS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, "input"


def _image_path(folders: Folders, image: str) -> Path:
    name, kind = _annotated(image)
    return folders.resolve(kind, name)


def load_image_file(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an image file as ComfyUI's LoadImage does.

    Returns
    -------
    tuple
        IMAGE ``[F, H, W, 3]`` float 0..1 (one entry per frame of the first frame's size,
        EXIF orientation applied) and MASK ``[F, H, W]`` = ``1 - alpha``, or ``[F, 64, 64]``
        zeros for frames without alpha.
    """
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    size: tuple[int, int] | None = None
    with Image.open(path) as img:
        for frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(frame) or frame
            if frame.mode == "I":  # 16-bit greyscale
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            if rgb.size != size:
                continue
            arr = np.array(rgb).astype(np.float32) / 255.0
            images.append(torch.from_numpy(arr)[None])  # [1, H, W, 3]
            if "A" in frame.getbands():
                alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)
            elif frame.mode == "P" and "transparency" in frame.info:
                alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(alpha)
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32)
            masks.append(mask[None])  # [1, H, W]
    return torch.cat(images, dim=0), torch.cat(masks, dim=0)


def _file_hash(folders: Folders, image: str) -> str:
    digest = hashlib.sha256()
    with open(_image_path(folders, image), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _validate_image(folders: Folders, image: str) -> bool | str:
    """True, or ComfyUI's message plus close matches from the input folder."""
    try:
        _image_path(folders, image)
    except FolderError as exc:
        if isinstance(exc, PathEscapeError):  # absolute or escaping: its own message and fix
            return f"Invalid image file: {exc}"
        name, kind = _annotated(image)
        message, fix = folders.missing(kind, name)  # the folder looked in, its files, close first
        return f"Invalid image file: {message}. Fix: {fix}"
    return True


class LoadImage:
    """Load an image from the input folder as IMAGE and its alpha channel as MASK."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        files = listing("input")
        return {"required": {"image": (sorted(files), {"image_upload": True})}}

    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    CATEGORY = "image"

    def load_image(self, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = _image_path(_folders(), image)
        try:
            return load_image_file(path)
        except OSError as exc:  # a failing disk, permissions, not an image
            raise NodeError(
                f"cannot read {path}: {type(exc).__name__}: {exc}", input_name="image",
                expected="a readable image file",
                fix="check the file and its disk, or choose another image") from exc

    @classmethod
    def IS_CHANGED(cls, image: str) -> str:
        return _file_hash(_folders(), image)

    @classmethod
    def VALIDATE_INPUTS(cls, image: str) -> bool | str:
        return _validate_image(_folders(), image)


class LoadImageMask:
    """Load one channel (alpha, red, green or blue) of an image from the input folder as MASK."""

    _color_channels: ClassVar[list[str]] = ["alpha", "red", "green", "blue"]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        files = listing("input")
        return {
            "required": {
                "image": (sorted(files), {"image_upload": True}),
                "channel": (cls._color_channels,),
            }
        }

    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image"
    CATEGORY = "mask"

    def load_image(self, image: str, channel: str) -> tuple[torch.Tensor]:
        with Image.open(_image_path(_folders(), image)) as opened:
            img = ImageOps.exif_transpose(opened) or opened
            if img.getbands() != ("R", "G", "B", "A"):
                if img.mode == "I":
                    img = img.point(lambda v: v * (1 / 255))
                img = img.convert("RGBA")
            c = channel[0].upper()
            arr = np.array(img.getchannel(c)).astype(np.float32) / 255.0
        mask = torch.from_numpy(arr)
        if c == "A":
            mask = 1.0 - mask
        return (mask[None],)  # [1, H, W]

    @classmethod
    def IS_CHANGED(cls, image: str, channel: str) -> str:
        return _file_hash(_folders(), image)

    @classmethod
    def VALIDATE_INPUTS(cls, image: str) -> bool | str:
        return _validate_image(_folders(), image)


class SaveImage:
    """Save images as PNG to the output folder, with the prompt and workflow as metadata."""

    def __init__(self) -> None:
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = 4

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": (
                    "STRING",
                    {
                        "default": "ComfyUI",
                        "tooltip": "The prefix for the file to save; may hold a subfolder "
                        "and %width%, %height%, %year%... variables.",
                    },
                ),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES: tuple[str, ...] = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your output directory."

    def save_images(
        self,
        images: torch.Tensor,
        filename_prefix: str = "ComfyUI",
        prompt: dict[str, Any] | None = None,
        extra_pnginfo: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        found = services()
        folders = folders_service(found)
        registry = getattr(found.session, "registry", None)
        base = folders.output_dir if self.type == "output" else folders.temp_dir
        try:
            full_dir, filename, counter, subfolder = folders.save_path(
                filename_prefix + self.prefix_append, images[0].shape[1], images[0].shape[0], self.type
            )
        except OSError as exc:  # the folder cannot be made or listed (read-only, vanished)
            raise self._write_error(exc, Path(base), images, []) from exc
        chunks = png_text_chunks(prompt, extra_pnginfo, registry)
        results: list[dict[str, Any]] = []
        for batch_number, image in enumerate(images):
            arr = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
            img = Image.fromarray(arr)
            meta = PngInfo()
            for key, text in chunks.items():
                meta.add_text(key, text)
            stem = filename.replace("%batch_num%", str(batch_number))
            while True:  # never overwrite, even if another writer raced us to the name
                file = f"{stem}_{counter:05}_.png"
                try:
                    write_png(full_dir / file, img, meta, self.compress_level)
                    break
                except FileExistsError:
                    counter += 1
                except OSError as exc:  # disk full, read-only, quota: no half-written file stays
                    raise self._write_error(exc, full_dir / file, images, results) from exc
            results.append({"filename": file, "subfolder": subfolder, "type": self.type})
            counter += 1
        return {"ui": {"images": results}}

    def _write_error(self, exc: OSError, path: Path, images: torch.Tensor,
                     saved: list[dict[str, Any]]) -> OutputWriteError:
        reason = exc.strerror or str(exc)
        code = errno.errorcode.get(exc.errno or 0, "")
        where = "output folder" if self.type == "output" else "temp folder"
        done = f"; {len(saved)} of {len(images)} were written before it" if saved else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = f"free space on the disk of {path.parent} (or a quota), "
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = f"make {path.parent} writable, "
        else:
            fix = f"check {path.parent}, "
        fix += ("or save elsewhere (session.output_dir = 'another/folder'); run it again: the images "
                "are cached upstream, so only the save reruns")
        return OutputWriteError(
            f"cannot write {path.name} to the {where} {path.parent}: {reason}"
            f"{' (' + code + ')' if code else ''}{done}. The images are not lost: they are shown "
            "inline and kept in this error's .images",
            images=images, saved=saved, path=str(path), input_name="filename_prefix",
            expected=f"a writable {where} with free space", fix=fix)


def write_png(path: Path, img: Image.Image, meta: PngInfo, compress_level: int) -> None:
    """Write one PNG to a new file (``FileExistsError`` if the name is taken); a failed write
    (disk full, I/O error) removes the partial file it made before the error goes on."""
    f = open(path, "xb")  # noqa: SIM115 - closed below, where a failed close also cleans up
    try:
        img.save(f, format="PNG", pnginfo=meta, compress_level=compress_level)
        f.close()  # the last buffered bytes land here: a full disk may say so only now
    except BaseException:
        with contextlib.suppress(OSError):
            f.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


class PreviewImage(SaveImage):
    """Save images to the temp folder (random prefix, fast compression) to show them."""

    def __init__(self) -> None:
        self.type = "temp"
        letters = "abcdefghijklmnopqrstupvxyz"
        self.prefix_append = "_temp_" + "".join(random.choice(letters) for _ in range(5))
        self.compress_level = 1

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"images": ("IMAGE",)},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    DESCRIPTION = "Preview the images without saving them to the output directory."


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "LoadImage": LoadImage,
    "LoadImageMask": LoadImageMask,
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "LoadImage": "Load Image",
    "LoadImageMask": "Load Image (as Mask)",
    "SaveImage": "Save Image",
    "PreviewImage": "Preview Image",
}
