"""``Gallery``: thumbnails of a run's images (or a cell's history of runs), click to enlarge."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import traitlets

from comfy_notebook.widgets._base import STATIC, View
from comfy_notebook.widgets._images import data_url, png_bytes, to_images
from comfy_notebook.widgets._meta import FIELDS, prompt_metadata

__all__ = ["Gallery"]


class Gallery(View):
    """Image grid with generation parameters, copy-prompt and save-PNG buttons.

    Parameters
    ----------
    images:
        Images of a first run: IMAGE tensors ``[B,H,W,C]``, arrays, PIL images, real-mode handles
        or lists of these (see :meth:`add`).
    prompt:
        API-format prompt behind the images (default: the handle's ``to_api()`` if it has one).
    output_dir:
        Where "save" writes PNGs (default: the current session's ``output_dir``, else ``./output``).
    thumb_size:
        Long side of the thumbnails sent to the browser, in pixels.
    """

    _esm = STATIC / "gallery.js"
    items: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    selected = traitlets.Int(-1).tag(sync=True)
    full = traitlets.Unicode("").tag(sync=True)  # data URL of the selected image at full size

    def __init__(self, images: Any = None, *, prompt: dict[str, Any] | None = None,
                 node_id: str | None = None, label: str | None = None,
                 output_dir: str | pathlib.Path | None = None, thumb_size: int = 192,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thumb_size = thumb_size
        self.output_dir = output_dir
        self._images: list[np.ndarray] = []
        self._prompts: list[dict[str, Any] | None] = []
        self._runs = 0
        if images is not None:
            self.add(images, prompt=prompt, node_id=node_id, label=label)

    def add(self, images: Any, *, prompt: dict[str, Any] | None = None,
            node_id: str | None = None, label: str | None = None) -> None:
        """Append one run (a batch or list of images) as a new group; returns nothing."""
        if prompt is None and hasattr(images, "to_api"):
            prompt = images.to_api()
        self._add_group([(images, prompt, node_id)], label)

    @classmethod
    def for_cell(cls, cell_id: str | None = None, **kwargs: Any) -> Gallery:
        """A gallery of a notebook cell's runs: the IMAGE handles each distinct run produced.

        Runs come oldest first (as :meth:`add` appends them), labelled ``run N`` with the cell's
        run number; the parameters of each image come from its handle's ``to_api()``.  The
        history keeps the last 16 distinct runs per cell (see :mod:`comfy_notebook.realmode.history`).

        Parameters
        ----------
        cell_id:
            The notebook cell id; ``None`` is the running cell, its current run included.
        **kwargs:
            Passed to :class:`Gallery` (``thumb_size``, ``output_dir``).

        Raises
        ------
        NoCellError
            When the IPython extension is not loaded, or ``cell_id`` is None outside a cell.
        """
        from comfy_notebook.realmode.state import cell_runs

        gallery = cls(**kwargs)
        for run in cell_runs(cell_id):
            sources: list[tuple[Any, Any, str | None]] = []
            for h in run.handles:
                api = h.to_api()  # ids in topological order: the handle's own node is the last
                sources.append((h, api, str(len(api))))
            gallery._add_group(sources, f"run {run.number}", run=run.number)
        return gallery

    @classmethod
    def recent(cls, limit: int | None = 64, **kwargs: Any) -> Gallery:
        """A gallery of the session's newest images from real-mode calls, newest last.

        What ``%comfy gallery`` shows when no cell is named; one group per image.
        """
        from comfy_notebook.realmode.state import recent_images

        gallery = cls(**kwargs)
        for h in recent_images(limit):
            api = h.to_api()
            gallery._add_group([(h, api, str(len(api)))], f"{h.node.class_type} #{len(api)}")
        return gallery

    def add_result(self, result: Any, prompt: dict[str, Any], *, label: str | None = None) -> None:
        """Append the images of a ``PromptResult``: the ``images`` input of each output node."""
        sources: list[tuple[Any, dict[str, Any] | None, str | None]] = []
        for node_id, node in prompt.items():
            link: Any = node.get("inputs", {}).get("images")
            if isinstance(link, list) and len(link) == 2 and str(link[0]) in result.outputs:
                sources.append((result.outputs[str(link[0])][int(link[1])], prompt, node_id))
        if not sources:  # no output node: every IMAGE-shaped output
            for node_id, values in result.outputs.items():
                for value in values:
                    shape: Any = getattr(value, "shape", ())
                    if len(shape) == 4 and shape[-1] in (3, 4):
                        sources.append((value, prompt, node_id))
        self._add_group(sources, label or f"run {getattr(result, 'prompt_id', '')}".strip())

    def _add_group(self, sources: list[tuple[Any, Any, str | None]], label: str | None,
                   run: int | None = None) -> None:
        """Convert, thumbnail and publish one run's images (``run``: its number, else the next)."""
        self._runs += 1
        number = self._runs if run is None else run
        items = list(self.items)
        for value, prompt, node_id in sources:
            meta = prompt_metadata(prompt, node_id)
            for image in to_images(value):
                index = len(self._images)
                self._images.append(image)
                self._prompts.append(prompt)
                items.append({
                    "index": index, "run": number, "label": label or f"run {number}",
                    "thumb": data_url(image, self.thumb_size), "width": int(image.shape[1]),
                    "height": int(image.shape[0]), "meta": meta,
                    "prompt": json.dumps(prompt, indent=2) if prompt else "",
                })
        self.items = items

    def clear(self) -> None:
        """Remove every image and run."""
        self._images, self._prompts, self._runs = [], [], 0
        self.items, self.selected, self.full = [], -1, ""

    def image(self, index: int) -> np.ndarray:
        """The full-size ``[H,W,3]`` uint8 image ``index``."""
        return self._images[index]

    @traitlets.observe("selected")
    def _on_selected(self, change: Any) -> None:
        index = change["new"]
        self.full = data_url(self._images[index]) if 0 <= index < len(self._images) else ""

    def save(self, index: int, directory: str | pathlib.Path | None = None) -> pathlib.Path:
        """Write image ``index`` as PNG with its API prompt in the ``prompt`` text chunk."""
        from PIL.PngImagePlugin import PngInfo

        if directory is None:
            directory = self.output_dir or _session_output_dir()
        folder = pathlib.Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        info = PngInfo()
        if self._prompts[index]:
            info.add_text("prompt", json.dumps(self._prompts[index]))
        counter = len(list(folder.glob("gallery_*.png")))
        while (path := folder / f"gallery_{counter:05d}.png").exists():
            counter += 1
        path.write_bytes(png_bytes(self._images[index], pnginfo=info))
        return path

    def action_save(self, index: int) -> str:
        """The save button."""
        return f"saved {self.save(int(index))}"

    def text(self) -> str:
        """One line per image: run, size and generation parameters."""
        lines = [f"Gallery: {len(self._images)} image(s) in {self._runs} run(s)"]
        for item in self.items:
            params = " ".join(f"{k}={item['meta'][k]}" for k in FIELDS if k in item["meta"])
            lines.append(f"  [{item['index']}] {item['label']}: {item['width']}x{item['height']}"
                         + (f" {params}" if params else ""))
        return "\n".join(lines)


def _session_output_dir() -> pathlib.Path:
    """The current session's ``output_dir``, else ``./output``."""
    from comfy_notebook._session import session as current_session

    out = getattr(current_session(), "output_dir", None)
    return pathlib.Path(out) if out else pathlib.Path("output")
