"""Inline display of real-mode handles: IMAGE as PNG (a batch as a grid), LATENT as a fast
latent-to-RGB preview, everything else as a one-line summary.

Models (MODEL / CLIP / VAE) and other objects that have a ``summary()`` method give their own
line (family, dtype, device, bytes); tensors are described by shape, dtype, device and bytes.
"""

from __future__ import annotations

import io
import math
import sys
from typing import Any

from comfy_notebook._units import human_bytes

__all__ = ["RunOutputs", "grid", "mimebundle", "png_bytes", "run_outputs", "summary"]

_PREVIEW_SIDE = 256  # long side of a latent preview, pixels


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _describe(value: Any) -> str:
    """A short description of any value (duck-typed ``summary()`` first)."""
    own = getattr(value, "summary", None)
    if callable(own) and not isinstance(value, type):
        try:
            return str(own())
        except Exception as exc:  # a broken summary must not break display
            return f"{type(value).__name__} (summary failed: {exc})"
    if _is_tensor(value):
        nbytes = value.element_size() * value.numel()
        return f"tensor {list(value.shape)} {str(value.dtype).replace('torch.', '')} on {value.device}, {human_bytes(nbytes)}"
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {_describe(v)}" for k, v in list(value.items())[:4])
        return "{" + inner + "}"
    if isinstance(value, list | tuple):
        head = _describe(value[0]) if value else ""
        return f"{type(value).__name__} of {len(value)}" + (f" [{head}, ...]" if head else "")
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def summary(handle: Any) -> str:
    """One line: output type, producing node, and a description of the value."""
    kind = getattr(handle, "type", "?")
    node = handle.node.class_type
    if kind == "UI":
        return f"<{node}: {_describe_ui(handle)}>"
    if kind == "SIGMAS" and _is_tensor(handle.value) and handle.value.ndim == 1:
        return f"<{kind} from {node}: {_describe_sigmas(handle.value)}>"
    return f"<{kind} from {node}: {_describe(handle.value)}>"


def _describe_sigmas(sigmas: Any) -> str:
    """``n steps: 14.61, 9.72, ..., 0`` (the first three and the last noise levels)."""
    values = [f"{v:.4g}" for v in sigmas.tolist()]
    shown = values if len(values) <= 5 else [*values[:3], "...", values[-1]]
    return f"{max(len(values) - 1, 0)} steps: " + ", ".join(shown)


def _describe_ui(handle: Any) -> str:
    """What an output node did: the images it saved (or showed), else its ui keys."""
    files = list(getattr(handle, "files", ()) or ())
    if files:
        names = ", ".join(f.name for f in files[:3]) + (", ..." if len(files) > 3 else "")
        where = files[0].parent
        first = ((handle.value or {}).get("images") or [{}])[0]
        verb = "saved" if first.get("type", "output") == "output" else "showed"
        return f"{verb} {len(files)} image{'s' if len(files) != 1 else ''} ({names}) in {where}"
    ui = handle.value
    if isinstance(ui, dict) and ui:
        return "ui " + ", ".join(sorted(ui))
    return "done (no ui result)"


def _files_array(files: Any) -> Any:
    """The image files as one uint8 grid (the first file alone when sizes differ)."""
    import numpy as np
    from PIL import Image

    arrays = []
    for f in files:
        with Image.open(f) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    if not arrays:
        return None
    if any(a.shape != arrays[0].shape for a in arrays):
        arrays = arrays[:1]
    return grid(np.stack(arrays))


def grid(images: Any) -> Any:
    """Tile ``[B,H,W,C]`` uint8 images into one ``[rows*H, cols*W, C]`` array."""
    import numpy as np

    b, h, w, c = images.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    out = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, cols)
        out[r * h : (r + 1) * h, col * w : (col + 1) * w] = images[i]
    return out


def _image_array(value: Any) -> Any:
    """An IMAGE value (tensor or array, ``[B,H,W,C]`` in 0..1) as uint8 numpy."""
    import numpy as np

    if _is_tensor(value):
        value = value.detach().float().cpu().numpy()
    array = np.asarray(value, dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def _latent_array(value: Any) -> Any:
    """A LATENT value's latent-to-RGB preview (its format's factors), upscaled (nearest) to a visible size."""
    import numpy as np

    from comfy_notebook.families.preview import latent_to_rgb

    samples = value["samples"] if isinstance(value, dict) else value
    rgb = latent_to_rgb(samples)  # [B,h,w,3] uint8
    scale = max(1, _PREVIEW_SIDE // max(rgb.shape[1], rgb.shape[2]))
    return np.repeat(np.repeat(rgb, scale, axis=1), scale, axis=2)


def _encode_png(array: Any) -> bytes:
    from PIL import Image

    if array.shape[-1] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def images_png(images: Any) -> bytes | None:
    """PNG bytes of an IMAGE batch (a grid), e.g. the images an unwritable folder did not take."""
    try:
        return _encode_png(grid(_image_array(images)))
    except (TypeError, ValueError, AttributeError, OSError):
        return None


def png_bytes(handle: Any) -> bytes | None:
    """PNG bytes for IMAGE / LATENT / MASK handles (a batch as a grid), else ``None``."""
    kind = getattr(handle, "type", None)
    value = handle.value
    try:
        if kind == "UI":
            files = [f for f in getattr(handle, "files", ()) if f.is_file()]
            array = _files_array(files) if files else None
            return _encode_png(array) if array is not None else None
        if kind == "IMAGE":
            return _encode_png(grid(_image_array(value)))
        if kind == "MASK":
            return _encode_png(grid(_image_array(value[..., None] if value.ndim == 3 else value)))
        if kind == "LATENT" and isinstance(value, dict) and getattr(value.get("samples"), "ndim", 0) == 4:
            from comfy_notebook.families import latent_format_for

            fmt = latent_format_for(int(value["samples"].shape[1]))
            if fmt is None or fmt.rgb_factors is None:
                return None  # no preview factors for latents of this many channels
            return _encode_png(grid(_latent_array(value)))
    except (TypeError, ValueError, AttributeError, OSError):
        return None
    return None


def mimebundle(handle: Any) -> dict[str, Any]:
    """``{"text/plain": summary, "image/png": ...}`` for Jupyter's rich display."""
    bundle: dict[str, Any] = {"text/plain": summary(handle)}
    png = png_bytes(handle)
    if png is not None:
        bundle["image/png"] = png
    return bundle


class RunOutputs:
    """A whole-workflow run (``%%comfy``, ``Workflow.run``) shown as a cell shows handles: the
    images inline and one summary line.  Attributes of the :class:`PromptResult` (``outputs``,
    ``ui``, ``executed``, ``cached``, ...) are read through."""

    def __init__(self, result: Any, images: list[Any], files: list[Any]) -> None:
        self.result = result
        self._images = images  # IMAGE values of the workflow's leaves
        self._files = files  # files its output nodes saved or showed

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.result, name)

    def summary(self) -> str:
        """One line: what ran, what came from cache, what was saved."""
        r = self.result
        line = f"executed {len(r.executed)} nodes, {len(r.cached)} from cache in {r.seconds:.2f} s"
        if self._files:
            line += f"; images: {', '.join(f.name for f in self._files[:3])}" + (" ..." if len(self._files) > 3 else "")
        elif self._images:
            line += f"; {len(self._images)} image output(s)"
        return line

    def _png(self) -> bytes | None:
        try:
            files = [f for f in self._files if f.is_file()]
            if files:
                array = _files_array(files)
            elif self._images:
                import numpy as np

                arrays = [_image_array(v) for v in self._images]
                if any(a.shape[1:] != arrays[0].shape[1:] for a in arrays):
                    arrays = arrays[:1]
                array = grid(np.concatenate(arrays))
            else:
                return None
            return _encode_png(array) if array is not None else None
        except (TypeError, ValueError, AttributeError, OSError):
            return None

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {"text/plain": repr(self)}
        png = self._png()
        if png is not None:
            bundle["image/png"] = png
        return bundle

    def __repr__(self) -> str:
        return f"<{self.summary()}>"


def run_outputs(result: Any, order: list[Any], ids: dict[int, str], folders: Any) -> RunOutputs:
    """The :class:`RunOutputs` of a run of recorded nodes ``order`` (ids: ``id(node) -> node id``)."""
    used = {id(v.node) for n in order for v in n.inputs.values() if hasattr(v, "node") and hasattr(v, "slot")}
    files: list[Any] = []
    images: list[Any] = []
    roots = {"output": folders.output_dir, "temp": folders.temp_dir, "input": folders.input_dir}
    for n in order:
        node_id = ids[id(n)]
        ui = result.ui.get(node_id)
        for item in (ui or {}).get("images", []) if isinstance(ui, dict) else []:
            if isinstance(item, dict) and item.get("filename") and item.get("type", "output") in roots:
                files.append(roots[item.get("type", "output")] / (item.get("subfolder") or "") / item["filename"])
        types = n.spec.return_types if n.spec is not None else ()
        if id(n) not in used and node_id in result.outputs:
            images += [v for t, v in zip(types, result.outputs[node_id], strict=False) if t == "IMAGE"]
    return RunOutputs(result, images, files)
