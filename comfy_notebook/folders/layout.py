"""The :class:`Folders` of a session: where each kind of file is searched, listed, resolved
and saved, in ComfyUI's layout (reference: ComfyUI ``folder_paths.py``)."""

from __future__ import annotations

import builtins
import difflib
import os
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from comfy_notebook.folders.config import _extra_paths_from_yaml, _read_config
from comfy_notebook.folders.kinds import (
    _IO_KINDS,
    _LEGACY,
    ENV_MODELS,
    IMAGE_EXTENSIONS,
    MODEL_EXTENSIONS,
    MODEL_KINDS,
    FolderError,
    PathEscapeError,
)
from comfy_notebook.folders.names import _check_name, _inside, next_save_path

__all__ = ["Folders", "folders_service"]

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
        return next_save_path(self.paths(kind)[0], prefix, width, height)

    def __repr__(self) -> str:
        return (
            f"Folders(models_dir={str(self.models_dir)!r}, output_dir={str(self.output_dir)!r}, "
            f"input_dir={str(self.input_dir)!r})"
        )


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
