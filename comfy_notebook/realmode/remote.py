"""Real mode against a remote backend (a ComfyUI server): calls run there, caching stays here.

Models, conditionings and latents cannot travel from a server to the notebook, so a call whose
outputs are such values runs nothing: its handle holds a :class:`RemoteValue` placeholder and its
recorded ancestry.  A call that yields images (``VAEDecode``, ``LoadImage``, ...) submits that
ancestry as one prompt, with a ``PreviewImage`` per IMAGE output, and downloads the images as
IMAGE tensors ``[B,H,W,C]``; an output node (``SaveImage``) submits its ancestry and keeps the
server's ``ui``.  Every result is stored in the session's cache under the node's signature (the
same structural key as in-process), so a cell that runs again finds every call cached and
submits nothing; the server's own cache makes a new seed rerun only the sampler onwards.
"""

from __future__ import annotations

import io
from typing import Any

from comfy_notebook.errors import BackendError, NodeError

__all__ = ["RemoteValue", "is_remote", "remote_execute"]


class RemoteValue:
    """A value that lives on the server (a MODEL, CONDITIONING, LATENT, ...) in real mode."""

    nbytes = 0

    def __init__(self, class_type: str, slot: int, type_name: str, where: str) -> None:
        self.class_type, self.slot, self.type, self.where = class_type, slot, type_name, where

    def __repr__(self) -> str:
        return f"<{self.type} of {self.class_type}[{self.slot}] on {self.where}>"


def is_remote(session: Any) -> bool:
    """Whether ``session`` runs prompts on a backend that brings its own nodes (a server)."""
    return bool(getattr(getattr(session, "_backend", None), "replaces_nodes", False))


def _image_tensor(blobs: list[bytes]) -> Any:
    import numpy as np
    import torch
    from PIL import Image

    arrays = []
    for data in blobs:
        with Image.open(io.BytesIO(data)) as img:
            arrays.append(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays))  # [B, H, W, 3]


def remote_execute(session: Any, node: Any, graph: Any, target: str, key: str | None) -> tuple[Any, Any]:
    """Run ``node`` (id ``target`` in ``graph``, its recorded ancestry) on the session's server.

    Returns ``(outputs, ui)`` as the in-process path does and stores them in the session's cache
    under ``key`` (the node's signature).
    """
    from comfy_notebook.backends.protocol import ImageRef
    from comfy_notebook.engine.cache import is_cacheable

    backend = session._backend
    spec = node.spec
    if key is None or not is_cacheable(key):
        raise NodeError(
            f"{node.class_type} takes a value made in this notebook (a tensor or a Python object), "
            f"which cannot be sent to the server at {backend.name}",
            node_type=node.class_type,
            fix="build the value with the server's nodes (LoadImage and friends), or run this "
                "session in process")
    api = graph.to_api()
    images = [i for i, t in enumerate(spec.return_types) if t == "IMAGE"]
    ui = None
    values: list[Any] = [RemoteValue(node.class_type, i, t, backend.name)
                         for i, t in enumerate(spec.return_types)]
    if spec.output_node or images:
        for i in images:
            api[f"{target}.preview.{i}"] = {"class_type": "PreviewImage",
                                           "inputs": {"images": [target, i]}}
        result = session.run_prompt(api)
        ui = result.ui.get(target)
        for i in images:
            refs = (result.ui.get(f"{target}.preview.{i}") or {}).get("images", ())
            if not refs:
                raise BackendError(f"the server sent no preview of {node.class_type} output {i}",
                                   backend=backend.name)
            values[i] = _image_tensor([backend.fetch(ImageRef(r["filename"], r.get("subfolder", ""),
                                                              r.get("type", "temp"))) for r in refs])
    outputs = tuple([v] for v in values)
    node.signature = key
    session.cache.put(key, outputs, ui)
    return outputs, ui
