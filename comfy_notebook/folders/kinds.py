"""The kinds of files ComfyUI keeps in folders, their extensions, and the folder errors."""

from __future__ import annotations

from comfy_notebook.errors import ComfyNotebookError, NodeError

__all__ = [
    "ENV_MODELS",
    "FILE_INPUTS",
    "IMAGE_EXTENSIONS",
    "MODEL_EXTENSIONS",
    "MODEL_KINDS",
    "FolderError",
    "PathEscapeError",
]

MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# kind -> sub-folders of the models root that hold it (first is where new files go).
MODEL_KINDS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "vae": ("vae",),
    "loras": ("loras",),
    "embeddings": ("embeddings",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("unet", "diffusion_models"),
    "upscale_models": ("upscale_models",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "clip_vision": ("clip_vision",),
    "hypernetworks": ("hypernetworks",),
    "gligen": ("gligen",),
    "style_models": ("style_models",),
    "configs": ("configs",),
}
# ComfyUI's legacy names, accepted everywhere a kind is.
_LEGACY = {"clip": "text_encoders", "unet": "diffusion_models"}
_IO_KINDS = ("input", "output", "temp")

# ComfyUI's input names for files picked from a folder kind (how errors know where to look).
FILE_INPUTS: dict[str, str] = {
    "ckpt_name": "checkpoints",
    "vae_name": "vae",
    "lora_name": "loras",
    "unet_name": "diffusion_models",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "control_net_name": "controlnet",
    "model_name": "upscale_models",
    "hypernetwork_name": "hypernetworks",
    "gligen_name": "gligen",
    "style_model_name": "style_models",
    "image": "input",
}

ENV_MODELS = "COMFY_NOTEBOOK_MODELS"


class FolderError(ComfyNotebookError):
    """A folder kind is unknown, a file is missing, or a config file is malformed."""


class PathEscapeError(FolderError, NodeError):
    """A file name or filename prefix would leave its folder (``..``, absolute, symlink out)."""


# ---------------------------------------------------------------------------------------------
# extra_model_paths.yaml: the small YAML subset ComfyUI's example uses
# ---------------------------------------------------------------------------------------------


