"""The typed services a session hands to the nodes it runs: itself, its folders, its models.

A :class:`Services` object is made by every :class:`~comfy_notebook.Session` and passed
explicitly to the engine, which puts it on each running node's context
(``current_context().services``); node code reads it through
:mod:`comfy_notebook.nodes._services`.  Members are made on first use, so a session that never
touches a model never imports torch:

- ``folders``: the session's :class:`~comfy_notebook.folders.Folders`.  Unless set explicitly
  (``session.set_models_dir``, or assigning ``services.folders``), they follow the
  configuration: ``Session(models_dir=...)``, else ``$COMFY_NOTEBOOK_MODELS``, else the config
  file, re-read when that changes, so a models folder set after the first node call is seen;
- ``models``: the session's :class:`~comfy_notebook.runtime.manager.ModelManager`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from comfy_notebook.folders import ENV_MODELS, Folders

if TYPE_CHECKING:
    from comfy_notebook.runtime.manager import ModelManager

__all__ = ["Services"]


class Services:
    """The session, its folders and its model manager (each made on first use)."""

    __slots__ = ("_config", "_folders", "_folders_pinned", "_models", "session")

    def __init__(self, session: Any = None, *, folders: Folders | None = None, models: ModelManager | None = None) -> None:
        self.session = session
        self._folders = folders
        self._folders_pinned = folders is not None
        self._config: tuple[Any, ...] | None = None
        self._models = models

    # -- folders -----------------------------------------------------------------------------

    def _folder_config(self) -> tuple[Any, ...]:
        """What the configured folders depend on (they are rebuilt when this changes)."""
        s = self.session
        return (getattr(s, "models_dir", None), getattr(s, "output_dir", None), os.environ.get(ENV_MODELS))

    @property
    def folders(self) -> Folders:
        """The session's folders (rebuilt when the configuration they came from changed)."""
        if self._folders is not None and self._folders_pinned:
            return self._folders
        config = self._folder_config()
        if self._folders is None or config != self._config:
            models_dir, output_dir, _ = config
            self._folders = Folders.from_config(models_dir=models_dir, output_dir=output_dir)
            self._config = config
        return self._folders

    @folders.setter
    def folders(self, value: Folders | None) -> None:
        self._folders = value
        self._folders_pinned = value is not None
        self._config = None

    @property
    def folders_configured(self) -> bool:
        """Whether a models folder was named anywhere (argument, environment, config file)."""
        if self._folders_pinned:
            return True
        models_dir, _, env = self._folder_config()
        if models_dir or env:
            return True
        from comfy_notebook.folders import configured_models_dir

        return configured_models_dir() is not None

    # -- models ------------------------------------------------------------------------------

    @property
    def models(self) -> ModelManager:
        """The session's model manager (made on first use; this imports torch)."""
        if self._models is None:
            from comfy_notebook.runtime.service import make_manager

            self._models = make_manager()
        return self._models

    @models.setter
    def models(self, value: ModelManager | None) -> None:
        self._models = value

    @property
    def models_loaded(self) -> ModelManager | None:
        """The model manager if one was made, else ``None`` (never makes one)."""
        return self._models

    # -- code written for the old string-keyed services ------------------------------------
    _NAMES = ("session", "folders", "models")

    def __getitem__(self, name: str) -> Any:
        """``services["models"]`` as ``services.models`` (only the three typed members)."""
        if name not in self._NAMES:
            raise KeyError(f"no service {name!r}; the services are {', '.join(self._NAMES)} (attributes)")
        return getattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        if name not in self._NAMES:
            raise KeyError(f"no service {name!r}; the services are {', '.join(self._NAMES)} (attributes)")
        setattr(self, name, value)

    def __repr__(self) -> str:
        made = [n for n, v in (("folders", self._folders), ("models", self._models)) if v is not None]
        return f"Services({', '.join(made) or 'nothing made yet'})"
