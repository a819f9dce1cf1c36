"""``HypernetworkLoader``: ComfyUI's node (``comfy_extras/nodes_hypernetwork.py``,
comfyanonymous/ComfyUI@00728eb); the format and the patch are
:mod:`comfy_notebook.runtime.hypernetwork`."""

from __future__ import annotations

from typing import Any

from comfy_notebook.nodes._services import (
    file_fingerprint,
    folders,
    listing,
    model_manager,
    services,
)

__all__ = ["NODE_CLASS_MAPPINGS"]


class HypernetworkLoader:
    """Apply a hypernetwork (models/hypernetworks) to a MODEL's attention keys and values."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL",),
            "hypernetwork_name": (listing("hypernetworks"),),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
        }}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_hypernetwork"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, hypernetwork_name: str, **_: Any) -> str:
        return file_fingerprint("hypernetworks", hypernetwork_name)

    def load_hypernetwork(self, model: Any, hypernetwork_name: str, strength: float) -> tuple[Any]:
        from comfy_notebook.runtime.hypernetwork import load_hypernetwork

        svc = services()
        path = folders(svc).resolve("hypernetworks", hypernetwork_name)
        if strength == 0:
            return (model,)
        return (model.with_attn_patch(load_hypernetwork(path, strength, manager=model_manager(svc))),)


NODE_CLASS_MAPPINGS: dict[str, type] = {"HypernetworkLoader": HypernetworkLoader}
