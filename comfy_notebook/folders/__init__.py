"""Model, input, output and temp folders in ComfyUI's layout.

A user with a ComfyUI installation points the notebook at it (``Session(models_dir=...)``, the
``COMFY_NOTEBOOK_MODELS`` environment variable or ``~/.config/comfy_notebook/config.toml``, in
that order) and every model is found under the same folder names ComfyUI uses: ``checkpoints``,
``vae``, ``loras``, ``embeddings``, ``text_encoders`` (and the old ``clip``), ``diffusion_models``
(and ``unet``), ``upscale_models``, ``controlnet``.  ComfyUI's ``extra_model_paths.yaml`` adds more
folders.  Names in combo lists use forward slashes for subfolders and are checked so that they
can never leave their folder.

Node code gets the session's :class:`Folders` from its typed services
(:class:`comfy_notebook.services.Services`; ``folders_service`` accepts those or a mapping).
Modules: :mod:`.kinds` (kinds, extensions, errors), :mod:`.config` (config file and
``extra_model_paths.yaml``), :mod:`.layout` (:class:`Folders`).
Reference for the behaviour: ComfyUI ``folder_paths.py`` and ``utils/extra_config.py``.
"""

from __future__ import annotations

from comfy_notebook.folders.config import configured_models_dir, parse_extra_model_paths
from comfy_notebook.folders.kinds import (
    ENV_MODELS,
    FILE_INPUTS,
    IMAGE_EXTENSIONS,
    MODEL_EXTENSIONS,
    MODEL_KINDS,
    FolderError,
    PathEscapeError,
)
from comfy_notebook.folders.layout import Folders, folders_service

__all__ = [
    "ENV_MODELS",
    "FILE_INPUTS",
    "IMAGE_EXTENSIONS",
    "MODEL_EXTENSIONS",
    "MODEL_KINDS",
    "FolderError",
    "Folders",
    "PathEscapeError",
    "configured_models_dir",
    "folders_service",
    "parse_extra_model_paths",
]
