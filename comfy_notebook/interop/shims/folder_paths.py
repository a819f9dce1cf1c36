"""``folder_paths`` for custom node packs, over the current comfy_notebook session's folders.

The functions packs call most (ComfyUI ``folder_paths.py``): ``get_filename_list``,
``get_full_path`` / ``get_full_path_or_raise``, ``get_folder_paths``, ``get_input_directory``,
``get_output_directory``, ``get_temp_directory``, ``get_annotated_filepath``,
``get_save_image_path``, ``models_dir`` and ``folder_names_and_paths``.
"""

from __future__ import annotations

import os
from typing import Any

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


def _folders() -> Any:
    from comfy_notebook.nodes._services import folders

    return folders()


def _kind(folder_name: str) -> str:
    return {"clip": "text_encoders", "unet": "diffusion_models"}.get(folder_name, folder_name)


def get_filename_list(folder_name: str) -> list[str]:
    return list(_folders().list(_kind(folder_name)))


def get_folder_paths(folder_name: str) -> list[str]:
    return [str(p) for p in _folders().paths(_kind(folder_name))]


def get_full_path(folder_name: str, filename: str) -> str | None:
    try:
        return str(_folders().resolve(_kind(folder_name), filename))
    except Exception:
        return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    return str(_folders().resolve(_kind(folder_name), filename))


def get_input_directory() -> str:
    return str(_folders().paths("input")[0])


def get_output_directory() -> str:
    return str(_folders().paths("output")[0])


def get_temp_directory() -> str:
    return str(_folders().paths("temp")[0])


def get_directory_by_type(type_name: str) -> str | None:
    return {"input": get_input_directory, "output": get_output_directory,
            "temp": get_temp_directory}.get(type_name, lambda: None)()


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    for suffix, kind in ((" [output]", "output"), (" [input]", "input"), (" [temp]", "temp")):
        if name.endswith(suffix):
            return os.path.join(str(get_directory_by_type(kind)), name[: -len(suffix)])
    return os.path.join(default_dir or get_input_directory(), name)


def exists_annotated_filepath(name: str) -> bool:
    return os.path.exists(get_annotated_filepath(name))


def get_save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0,
                        image_height: int = 0) -> tuple[str, str, int, str, str]:
    kind = "temp" if os.path.abspath(output_dir) == os.path.abspath(get_temp_directory()) else "output"
    full_dir, filename, counter, subfolder = _folders().save_path(
        filename_prefix, image_width, image_height, kind)
    return str(full_dir), filename, counter, subfolder, filename_prefix


def __getattr__(name: str) -> Any:
    if name == "models_dir":
        paths = _folders().paths("checkpoints")
        return str(paths[0].parent) if paths else ""
    if name == "folder_names_and_paths":
        folders = _folders()
        return {k: ([str(p) for p in folders.paths(k)], supported_pt_extensions) for k in folders.kinds}
    if name in ("output_directory", "input_directory", "temp_directory"):
        return get_directory_by_type(name.split("_")[0])
    raise AttributeError(name)
