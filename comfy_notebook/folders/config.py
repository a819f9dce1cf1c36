"""Configuration: ``config.toml``, ComfyUI's ``extra_model_paths.yaml`` (a small YAML subset
read without a YAML library; reference: ComfyUI ``utils/extra_config.py``)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comfy_notebook.folders.kinds import ENV_MODELS, FolderError

__all__ = ["configured_models_dir", "parse_extra_model_paths"]


def _strip_comment(line: str) -> str:
    """Drop a ``#`` comment that is not inside quotes."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _scalar(text: str) -> Any:
    """Interpret one YAML scalar: quoted string, bool, null or plain string."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("", "~", "null"):
        return None
    return text


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def parse_extra_model_paths(text: str) -> dict[str, dict[str, Any]]:
    """Parse the YAML subset of ComfyUI's ``extra_model_paths.yaml``.

    Supported: top-level sections (``comfyui:``, ``a111:``, any name) holding ``key: value``
    pairs, quoted or plain scalars, booleans, ``#`` comments, and ``|`` / ``>`` block scalars
    whose lines are multi-line path lists.

    Parameters
    ----------
    text:
        The file's contents.

    Returns
    -------
    dict
        ``{section: {key: value}}``; block scalars are returned as newline-joined strings,
        as a YAML parser would.

    Raises
    ------
    FolderError
        On a line that does not fit the subset (with its line number).
    """
    result: dict[str, dict[str, Any]] = {}
    section: dict[str, Any] | None = None
    lines = text.replace("\t", "    ").splitlines()
    i = 0
    while i < len(lines):
        raw = _strip_comment(lines[i]).rstrip()
        i += 1
        if not raw.strip() or raw.strip() == "---":
            continue
        key, sep, value = raw.strip().partition(":")
        if not sep:
            raise FolderError(
                f"extra_model_paths line {i}: expected 'key: value', received {raw.strip()!r}. "
                "Fix: write one 'name: path' pair per line under a section"
            )
        key = _scalar(key)
        if _indent(raw) == 0:
            section = result.setdefault(str(key), {})
            if value.strip():
                raise FolderError(
                    f"extra_model_paths line {i}: top-level key {key!r} must open a section, "
                    f"received value {value.strip()!r}. Fix: indent the entries below it"
                )
            continue
        if section is None:
            raise FolderError(f"extra_model_paths line {i}: entry {key!r} outside any section")
        value = value.strip()
        if value[:1] in ("|", ">"):
            base = _indent(raw)
            block: list[str] = []
            while i < len(lines):
                nxt = _strip_comment(lines[i]).rstrip()
                if nxt.strip() and _indent(nxt) <= base:
                    break
                if nxt.strip():
                    block.append(nxt.strip())
                i += 1
            section[str(key)] = "\n".join(block) + ("\n" if block else "")
        else:
            section[str(key)] = _scalar(value)
    return result


def _extra_paths_from_yaml(path: Path) -> list[tuple[str, Path, bool]]:
    """(kind, folder, is_default) triples from an ``extra_model_paths.yaml`` file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FolderError(f"cannot read extra model paths file {path}: {exc}") from exc
    out: list[tuple[str, Path, bool]] = []
    yaml_dir = path.resolve().parent
    for section in parse_extra_model_paths(text).values():
        conf = dict(section)
        base = conf.pop("base_path", None)
        is_default = bool(conf.pop("is_default", False))
        base_path: Path | None = None
        if base:
            base_path = Path(os.path.expandvars(os.path.expanduser(str(base))))
            if not base_path.is_absolute():
                base_path = yaml_dir / base_path
        for kind, value in conf.items():
            if value is None or isinstance(value, bool):
                continue
            for entry in str(value).split("\n"):
                entry = entry.strip()
                if not entry:
                    continue
                p = Path(os.path.expandvars(os.path.expanduser(entry)))
                if not p.is_absolute():
                    p = (base_path or yaml_dir) / p
                out.append((kind, p, is_default))
    return out


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------


def _read_config(config_path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> dict[str, Any]:
    """The user config file's table (empty when there is none)."""
    if config_path is None:
        home = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        path = Path(home) / "comfy_notebook" / "config.toml"
        if not path.is_file():
            return {}
    else:
        path = Path(config_path).expanduser()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FolderError(
            f"cannot read config file {path}: {exc}. Fix: keys are models_dir, output_dir, "
            "input_dir, temp_dir, extra_model_paths"
        ) from exc
    table = data.get("comfy_notebook", data)
    return dict(table) if isinstance(table, Mapping) else {}


def configured_models_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """The models folder named by ``$COMFY_NOTEBOOK_MODELS`` or the config file, else ``None``."""
    env = os.environ if environ is None else environ
    if env.get(ENV_MODELS):
        return env[ENV_MODELS]
    try:
        found = _read_config(None, env).get("models_dir")
    except FolderError:
        return None
    return str(found) if found else None


