"""Model, input, output and temp folders in ComfyUI's layout.

A user with a ComfyUI installation points the notebook at it (``Session(models_dir=...)``, the
``COMFY_NOTEBOOK_MODELS`` environment variable or ``~/.config/comfy_notebook/config.toml``, in
that order) and every model is found under the same folder names ComfyUI uses: ``checkpoints``,
``vae``, ``loras``, ``embeddings``, ``text_encoders`` (and the old ``clip``), ``diffusion_models``
(and ``unet``), ``upscale_models``, ``controlnet``.  ComfyUI's ``extra_model_paths.yaml`` adds more
folders.  Names in combo lists use forward slashes for subfolders and are checked so that they
can never leave their folder.

Node code gets the session's :class:`Folders` from :func:`folders_service`, the one place that
builds it lazily and stores it in the session's services under ``"folders"``.
Reference for the behaviour: ComfyUI ``folder_paths.py`` and ``utils/extra_config.py``.
"""

from __future__ import annotations

import builtins
import difflib
import os
import time
import tomllib
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from comfy_notebook.errors import ComfyNotebookError, NodeError

__all__ = [
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


class Folders:
    """The model / input / output / temp folders of one session, in ComfyUI's layout.

    Parameters
    ----------
    models_dir:
        The models root (``ComfyUI/models``) or a ComfyUI installation root (which has a
        ``models`` folder; its ``input``/``output``/``temp`` folders are then used too).
    output_dir, input_dir, temp_dir:
        Override the I/O folders (defaults: next to the models root for a ComfyUI
        installation, else ``./output``, ``./input``, ``./temp``).
    extra_paths:
        An ``extra_model_paths.yaml`` path, or a mapping ``{kind: [folders]}``, or a list of
        either.  ``is_default`` sections are searched first, as in ComfyUI.

    Examples
    --------
    >>> folders = Folders("/opt/ComfyUI")                          # doctest: +SKIP
    >>> folders.list("checkpoints")                                # doctest: +SKIP
    ['sd15/v1-5-pruned-emaonly.safetensors']
    >>> folders.resolve("checkpoints", "sd15/v1-5-pruned-emaonly.safetensors")  # doctest: +SKIP
    """

    def __init__(
        self,
        models_dir: str | os.PathLike[str] | None,
        *,
        output_dir: str | os.PathLike[str] | None = None,
        input_dir: str | os.PathLike[str] | None = None,
        temp_dir: str | os.PathLike[str] | None = None,
        extra_paths: Any = None,
    ) -> None:
        self.configured = models_dir is not None  # False: the default ./models was assumed
        root = Path(models_dir).expanduser() if models_dir is not None else Path.cwd() / "models"
        io_base = Path.cwd()
        if (root / "models").is_dir() and not (root / "checkpoints").is_dir():
            io_base = root  # a ComfyUI installation root
            root = root / "models"
        elif root.name == "models" and (root.parent / "main.py").is_file():
            io_base = root.parent
        self.models_dir = root.absolute()
        self.output_dir = Path(output_dir or io_base / "output").expanduser().absolute()
        self.input_dir = Path(input_dir or io_base / "input").expanduser().absolute()
        self.temp_dir = Path(temp_dir or io_base / "temp").expanduser().absolute()
        self._paths: dict[str, list[Path]] = {
            kind: [self.models_dir / sub for sub in subs] for kind, subs in MODEL_KINDS.items()
        }
        for kind, folder, is_default in self._normalise_extra(extra_paths):
            self.add_path(kind, folder, is_default=is_default)
        self._listing: dict[Path, tuple[float, list[str]]] = {}

    # -- configuration ------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        models_dir: str | os.PathLike[str] | None = None,
        *,
        output_dir: str | os.PathLike[str] | None = None,
        input_dir: str | os.PathLike[str] | None = None,
        temp_dir: str | os.PathLike[str] | None = None,
        extra_paths: Any = None,
        environ: Mapping[str, str] | None = None,
        config_path: str | os.PathLike[str] | None = None,
    ) -> Folders:
        """Build from an explicit models dir, else ``$COMFY_NOTEBOOK_MODELS``, else the config file.

        The config file is ``$XDG_CONFIG_HOME/comfy_notebook/config.toml`` (default
        ``~/.config/comfy_notebook/config.toml``) with optional keys ``models_dir``,
        ``output_dir``, ``input_dir``, ``temp_dir`` and ``extra_model_paths`` (a path or a list).
        Explicit arguments win over the file.
        """
        env = os.environ if environ is None else environ
        conf = _read_config(config_path, env)
        chosen = models_dir or env.get(ENV_MODELS) or conf.get("models_dir")
        extras: list[Any] = []
        for item in (conf.get("extra_model_paths"), extra_paths):
            if item is None:
                continue
            extras.extend(item if isinstance(item, list | tuple) else [item])
        return cls(
            chosen or None,
            output_dir=output_dir or conf.get("output_dir"),
            input_dir=input_dir or conf.get("input_dir"),
            temp_dir=temp_dir or conf.get("temp_dir"),
            extra_paths=extras or None,
        )

    @staticmethod
    def _normalise_extra(extra: Any) -> Iterable[tuple[str, Path, bool]]:
        """Turn the ``extra_paths`` argument into (kind, folder, is_default) triples."""
        if extra is None:
            return []
        items = extra if isinstance(extra, list | tuple) else [extra]
        out: list[tuple[str, Path, bool]] = []
        for item in items:
            if isinstance(item, str | os.PathLike):
                out.extend(_extra_paths_from_yaml(Path(item).expanduser()))
            elif isinstance(item, Mapping):
                for kind, folders in item.items():
                    seq = [folders] if isinstance(folders, str | os.PathLike) else folders
                    out.extend((kind, Path(f).expanduser(), False) for f in seq)
            else:
                raise FolderError(
                    f"extra_paths entries must be a YAML file path or a {{kind: [folders]}} "
                    f"mapping, received {type(item).__name__}"
                )
        return out

    def add_path(self, kind: str, folder: str | os.PathLike[str], *, is_default: bool = False) -> None:
        """Add a folder searched for ``kind`` (first when ``is_default``, else last)."""
        kind = _LEGACY.get(kind, kind)
        paths = self._paths.setdefault(kind, [])
        p = Path(folder).expanduser().absolute()
        if p in paths:
            paths.remove(p)
        if is_default:
            paths.insert(0, p)
        else:
            paths.append(p)

    # -- queries ------------------------------------------------------------------------------

    @property
    def kinds(self) -> list[str]:
        """Every known kind (model kinds plus ``input``, ``output``, ``temp``)."""
        return [*self._paths, *_IO_KINDS]

    def paths(self, kind: str) -> list[Path]:
        """The folders searched for ``kind``, in search order."""
        kind = _LEGACY.get(kind, kind)
        if kind == "input":
            return [self.input_dir]
        if kind == "output":
            return [self.output_dir]
        if kind == "temp":
            return [self.temp_dir]
        if kind not in self._paths:
            close = difflib.get_close_matches(kind, self.kinds, n=3)
            raise FolderError(
                f"unknown folder kind {kind!r}; expected one of {sorted(self.kinds)}"
                + (f". Did you mean {close[0]!r}?" if close else "")
            )
        return list(self._paths[kind])

    def _extensions(self, kind: str) -> frozenset[str] | None:
        if kind in _IO_KINDS:
            return IMAGE_EXTENSIONS
        if kind == "configs":
            return frozenset({".yaml", ".yml", ".json"})
        return MODEL_EXTENSIONS

    def _walk(self, folder: Path) -> list[str]:
        """Relative file names under ``folder``, cached until a directory's mtime changes."""
        try:
            stamp = self._tree_stamp(folder)
        except OSError:
            return []
        cached = self._listing.get(folder)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        names: list[str] = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames.sort()
            rel = Path(dirpath).relative_to(folder).as_posix()
            for fname in filenames:
                names.append(fname if rel == "." else f"{rel}/{fname}")
        self._listing[folder] = (stamp, names)
        return names

    @staticmethod
    def _tree_stamp(folder: Path) -> float:
        """A cheap change stamp: the sum of directory mtimes and the directory count."""
        total = 0.0
        count = 0
        for dirpath, _dirnames, _files in os.walk(folder, followlinks=True):
            total += os.stat(dirpath).st_mtime_ns
            count += 1
        if count == 0:
            raise FileNotFoundError(folder)
        return total + count * 1e-3

    def list(self, kind: str) -> list[str]:
        """File names of ``kind`` (forward slashes, known extensions only), sorted, no duplicates.

        Parameters
        ----------
        kind:
            ``"checkpoints"``, ``"vae"``, ``"loras"``, ... (``"clip"``/``"unet"`` accepted), or
            ``"input"`` (images in the input folder).
        """
        exts = self._extensions(_LEGACY.get(kind, kind))
        seen: set[str] = set()
        for folder in self.paths(kind):
            for name in self._walk(folder):
                if exts is None or Path(name).suffix.lower() in exts:
                    seen.add(name)
        return sorted(seen)

    def resolve(self, kind: str, name: str) -> Path:
        """The full path of file ``name`` of ``kind``.

        Raises
        ------
        PathEscapeError
            When ``name`` is absolute, contains ``..``, or resolves outside the folder
            (a symlink pointing out of it).
        FolderError
            When no folder of ``kind`` has the file; the message lists close matches.
        """
        norm = _check_name(str(name), f"{kind} name", kind)
        for folder in self.paths(kind):
            candidate = folder / norm
            if candidate.is_file():
                real_folder = folder.resolve()
                real = candidate.resolve()
                if not _inside(real, real_folder):
                    raise PathEscapeError(
                        f"{kind} name {name!r} is a symlink pointing outside {folder}",
                        expected=f"a file inside {folder}",
                        received=str(real),
                        fix="copy the file into the folder or link the whole folder instead",
                    )
                return candidate
        raise FolderError(self.explain_missing(kind, name))

    def explain_missing(self, kind: str, name: str) -> str:
        """Why ``name`` of ``kind`` is not found: the folders searched (or that none is
        configured), the files there (close matches first), and how to fix it — one "Fix:"."""
        message, fix = self.missing(kind, name)
        return f"{message}. Fix: {fix}"

    def missing(self, kind: str, name: str) -> tuple[str, str]:
        """(what is wrong, how to fix it) for a file ``name`` of ``kind`` that is not there."""
        kind = _LEGACY.get(kind, kind)
        folders = self.paths(kind)
        where = ", ".join(str(p) for p in folders)
        available = self.list(kind)
        close = difflib.get_close_matches(str(name), available, n=5, cutoff=0.4)
        others = [a for a in available if a not in close]
        shown = close + others[: max(0, 10 - len(close))]
        if kind in _IO_KINDS:
            files = (f"; files there: {shown}" + (" ..." if len(available) > len(shown) else "")) if available else "; it has no images"
            return (f"{kind} image {name!r} is not in the {kind} folder {where}{files}",
                    f"copy the image into {folders[0]} and pass its name relative to it"
                    + (f" (closest: {close[0]!r})" if close else ""))
        if not self.configured and not any(p.is_dir() for p in folders):
            head = (f"{kind} file {name!r} not found: no models folder is configured "
                    f"(looked in {where}, which does not exist)")
        elif not available:
            head = f"{kind} file {name!r} not found: {where} has no {kind} files"
        else:
            more = " ..." if len(available) > len(shown) else ""
            head = f"{kind} file {name!r} not found in {where}; there: {shown}{more}"
        if available:
            fix = (f"use one of the listed names (closest: {close[0]!r})" if close
                   else f"put the file into {folders[0]}, or use one of the listed names")
        else:
            fix = (f"put the file into {folders[0]}, or point the session at your models folder: "
                   "Session(models_dir=PATH) / session.set_models_dir(PATH) / %comfy models-dir PATH, "
                   f"the {ENV_MODELS} environment variable, or models_dir in "
                   "~/.config/comfy_notebook/config.toml")
        return head, fix

    def exists(self, kind: str, name: str) -> bool:
        """Whether :meth:`resolve` would find ``name`` (escapes count as missing)."""
        try:
            self.resolve(kind, name)
        except FolderError:
            return False
        return True

    def validate(self, kind: str, name: str) -> bool | str:
        """``True`` when ``name`` resolves, else a message with close matches.

        Shaped for a node's ``VALIDATE_INPUTS``: loaders whose combo lists were read at
        registration use it so files added later still validate, and missing ones fail with
        ComfyUI's ``custom_validation_failed`` and a did-you-mean list.
        """
        try:
            self.resolve(kind, name)
        except FolderError as exc:
            return str(exc)
        return True

    def close_matches(self, kind: str, name: str, n: int = 5) -> builtins.list[str]:
        """Names of ``kind`` close to ``name`` (difflib), for error messages."""
        return difflib.get_close_matches(name, self.list(kind), n=n, cutoff=0.4)

    # -- saving -------------------------------------------------------------------------------

    def save_path(
        self, prefix: str, width: int = 0, height: int = 0, kind: str = "output"
    ) -> tuple[Path, str, int, str]:
        """Where to save the next image for ``prefix``, like ComfyUI's ``get_save_image_path``.

        ``%width%``, ``%height%``, ``%year%``, ``%month%``, ``%day%``, ``%hour%``, ``%minute%``,
        ``%second%`` and ``%date:yyyy-MM-dd%``-style patterns are substituted; a prefix
        ``a/b/name`` saves into subfolder ``a/b``.  The counter is one more than the largest
        ``name_NNNNN_`` already there, so files are never overwritten.

        Returns
        -------
        tuple
            ``(full_dir, filename_base, counter, subfolder)``; files are named
            ``f"{filename_base}_{counter:05}_.png"``.

        Raises
        ------
        PathEscapeError
            When the prefix would leave the folder.
        """
        base_dir = self.paths(kind)[0]
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

    def __repr__(self) -> str:
        return (
            f"Folders(models_dir={str(self.models_dir)!r}, output_dir={str(self.output_dir)!r}, "
            f"input_dir={str(self.input_dir)!r})"
        )


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


def folders_service(services: Any) -> Folders:
    """The session's :class:`Folders` from its services.

    ``services`` is a :class:`comfy_notebook.services.Services` (what sessions hand to nodes:
    its ``folders``), or a plain mapping as older code passes (``{"session": s}``): then the
    folders are built from the session's ``models_dir`` / ``output_dir`` and stored back under
    ``"folders"``.
    """
    if not isinstance(services, Mapping):
        return services.folders  # type: ignore[no-any-return]
    found = services.get("folders")
    if isinstance(found, Folders):
        return found
    session = services.get("session")
    folders = Folders.from_config(
        models_dir=getattr(session, "models_dir", None),
        output_dir=getattr(session, "output_dir", None),
    )
    if isinstance(services, MutableMapping):
        services["folders"] = folders
    return folders
