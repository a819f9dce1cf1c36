"""File names inside a folder: the checks that keep a name in its folder, and ComfyUI's
save-path rule (``get_save_image_path``: variables, subfolders, the next free counter)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from comfy_notebook.folders.kinds import _IO_KINDS, PathEscapeError

__all__ = ["next_save_path"]


def _inside(child: Path, parent: Path) -> bool:
    """Whether ``child`` (resolved) lies in ``parent`` (resolved)."""
    try:
        child.relative_to(parent)
    except ValueError:
        return False
    return True


def _check_name(name: str, what: str, kind: str = "checkpoints") -> str:
    """Reject absolute paths and ``..`` parts; return the name with forward slashes."""
    example = "'photo.png'" if kind in _IO_KINDS else "'sd15/model.safetensors'"
    if not isinstance(name, str) or not name:
        raise PathEscapeError(
            f"{what} must be a non-empty string",
            expected="a file name relative to its folder",
            received=name,
        )
    norm = name.replace("\\", "/")
    if norm.startswith("/") or os.path.isabs(name) or (len(norm) > 1 and norm[1] == ":"):
        raise PathEscapeError(
            f"{what} {name!r} is an absolute path",
            expected=f"a name relative to its folder, e.g. {example}",
            received=name,
            fix="put the file into the folder and use its relative name",
        )
    if ".." in norm.split("/"):
        raise PathEscapeError(
            f"{what} {name!r} contains '..' and would leave its folder",
            expected="a name inside the folder",
            received=name,
            fix="remove the '..' parts",
        )
    return norm


def next_save_path(base_dir: Path, prefix: str, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
    """Where to save the next image for ``prefix`` under ``base_dir`` (see ``Folders.save_path``)."""
    if "%" in prefix:
        prefix = _substitute(prefix, width, height)
    norm = _check_name(prefix, "filename_prefix")
    subfolder, _, filename = norm.rpartition("/")
    if not filename:
        raise PathEscapeError(
            f"filename_prefix {prefix!r} has no file name part",
            expected="e.g. 'ComfyUI' or 'portraits/ComfyUI'",
            received=prefix,
        )
    full_dir = base_dir / subfolder if subfolder else base_dir
    base_real = base_dir.resolve()
    full_dir.mkdir(parents=True, exist_ok=True)
    if not _inside(full_dir.resolve(), base_real):
        raise PathEscapeError(
            f"filename_prefix {prefix!r} leads outside {base_dir} (symlinked folder)",
            expected=f"a subfolder of {base_dir}",
            received=str(full_dir.resolve()),
        )
    counter = 0
    stem = filename.lower()
    for entry in os.listdir(full_dir):
        # entry looks like "<filename>_<digits>_<anything>"
        if entry[: len(filename) + 1].lower() != stem + "_":
            continue
        digits = entry[len(filename) + 1 :].split("_", 1)[0]
        if digits.isdigit():
            counter = max(counter, int(digits))
    return full_dir, filename, counter + 1, subfolder



def _substitute(prefix: str, width: int, height: int) -> str:
    """ComfyUI's ``%width%``/``%height%``/date variables (server and front-end forms)."""
    now = time.localtime()
    values = {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02}",
        "%day%": f"{now.tm_mday:02}",
        "%hour%": f"{now.tm_hour:02}",
        "%minute%": f"{now.tm_min:02}",
        "%second%": f"{now.tm_sec:02}",
    }
    for key, val in values.items():
        prefix = prefix.replace(key, val)
    while "%date:" in prefix:
        start = prefix.index("%date:")
        end = prefix.find("%", start + 6)
        if end < 0:
            break
        fmt = prefix[start + 6 : end]
        for token, val in (
            ("yyyy", f"{now.tm_year:04}"), ("yy", f"{now.tm_year % 100:02}"),
            ("MM", f"{now.tm_mon:02}"), ("dd", f"{now.tm_mday:02}"),
            ("hh", f"{now.tm_hour:02}"), ("mm", f"{now.tm_min:02}"), ("ss", f"{now.tm_sec:02}"),
        ):
            fmt = fmt.replace(token, val)
        prefix = prefix[:start] + fmt + prefix[end + 1 :]
    return prefix
