"""``comfy_api.latest.ui``: what a V3 output node shows (``NodeOutput(ui=...)``)."""

from __future__ import annotations

from typing import Any

__all__ = ["PreviewImage", "PreviewMask", "PreviewText", "SavedImages", "SavedResult", "UIOutput"]


class UIOutput:
    """Base class: ``as_dict()`` is the ``ui`` payload the executor records."""

    def as_dict(self) -> dict[str, Any]:
        raise NotImplementedError


class SavedResult(dict):  # type: ignore[type-arg]
    """One saved file: ``{"filename", "subfolder", "type"}``."""

    def __init__(self, filename: str, subfolder: str, type: str) -> None:
        super().__init__(filename=filename, subfolder=subfolder, type=type)


class SavedImages(UIOutput):
    """Files already written by the node."""

    def __init__(self, results: list[SavedResult], is_animated: bool = False) -> None:
        self.results, self.is_animated = list(results), is_animated

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.results, "animated": (self.is_animated,)}


class PreviewImage(UIOutput):
    """Write ``image`` ([B, H, W, C] in 0..1) to the session's temp folder and show it."""

    def __init__(self, image: Any, animated: bool = False, cls: Any = None, **_: Any) -> None:
        from comfy_notebook.nodes.image_io import PreviewImage as _Preview

        saved = _Preview().save_images(image)
        self.values = saved["ui"]["images"]
        self.animated = animated

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.values, "animated": (self.animated,)}


class PreviewMask(PreviewImage):
    """A MASK ([B, H, W]) shown as a grey image."""

    def __init__(self, mask: Any, animated: bool = False, cls: Any = None, **kw: Any) -> None:
        image = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).movedim(1, -1).expand(
            -1, -1, -1, 3)
        super().__init__(image, animated, cls, **kw)


class PreviewText(UIOutput):
    """Text shown under the node."""

    def __init__(self, value: str, **_: Any) -> None:
        self.value = value

    def as_dict(self) -> dict[str, Any]:
        return {"text": (self.value,)}
