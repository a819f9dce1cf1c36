"""What the model manager keeps per model, and the records it hands out.

:class:`ManagedModel` holds a registered model's weights (or the factory that rebuilds them) and
where they live now; :class:`ModelMoved`, :class:`ManagerStats` and :class:`ModelInfo` are the
frozen records of moves, counters and ``manager.list()`` rows.  Import them from
:mod:`comfy_notebook.runtime.manager` (or :mod:`comfy_notebook.runtime`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from comfy_notebook.errors import ComfyNotebookError, ModelLoadError
from comfy_notebook.runtime.patches import ModelRef
from comfy_notebook.runtime.streaming import Streamer

if TYPE_CHECKING:
    from comfy_notebook.runtime.manager import ModelManager

__all__ = [
    "ManagedModel",
    "ManagerStats",
    "ModelInUseError",
    "ModelInfo",
    "ModelMoved",
    "UnknownModelError",
    "estimate_unet_memory",
]


class ModelInUseError(ComfyNotebookError, RuntimeError):
    """The operation needs a model that a running node is using."""


class UnknownModelError(ComfyNotebookError, KeyError):
    """No model of that name is registered."""


@dataclass(frozen=True)
class ModelMoved:
    """Event: ``name`` moved ``source`` -> ``target`` ("file", "cpu", "gpu", "partial", "unloaded")."""

    name: str
    source: str
    target: str
    nbytes: int
    seconds: float
    reason: str


@dataclass(frozen=True)
class ManagerStats:
    """Counters since the manager was created (a snapshot)."""

    bytes_moved_to_device: int = 0
    bytes_moved_to_host: int = 0  # bytes released from the device (the host master is kept)
    bytes_streamed: int = 0
    seconds_moving: float = 0.0
    loads: int = 0
    partial_loads: int = 0
    offloads: int = 0
    unloads: int = 0
    reloads: int = 0
    evictions: int = 0
    oom_retries: int = 0
    weights_patched: int = 0


@dataclass(frozen=True)
class ModelInfo:
    """One row of ``manager.list()``."""

    name: str
    kind: str
    source: str | None
    bytes: int
    dtype: torch.dtype | None
    location: str  # "gpu" (compute device) | "cpu" | "partial" | "unloaded"
    loaded_bytes: int
    last_used: float | None  # time.time() of the last use
    pinned: bool
    keep_loaded: bool
    in_use: bool
    holders: tuple[str, ...]
    family: str | None = None  # a family name: what the registrant said the weights are
    world: str = "comfy_notebook"  # "comfyui" for the models of an attached ComfyUI
    graphs: int = 0  # captured sampling steps held for this model (runtime.graphs)
    graph_bytes: int = 0  # device memory those graphs hold


def estimate_unet_memory(
    latent_shape: tuple[int, ...], dtype: torch.dtype, *, cfg: bool = True, factor: float = 2.0
) -> int:
    """Heuristic activation memory of a UNet forward on ``latent_shape`` [B, C, H, W].

    Proportional to batch x latent area x element size (CFG doubles the batch); ``factor``
    2.0 covers a 512 px 860M-parameter UNet with plain attention (~0.35 GB at fp16, batch 2).
    """
    batch = latent_shape[0] * (2 if cfg else 1)
    area = batch * int(torch.tensor(latent_shape[2:]).prod())
    elem = torch.empty((), dtype=dtype).element_size()
    return round(area * elem * (1 << 20) * factor / 100)


class ManagedModel:
    """A registered model: its weights (or a factory to rebuild them) and where they live now."""

    def __init__(self, manager: ModelManager, name: str, factory: Callable[[], nn.Module] | None,
                 kind: str, source: str | None, dtype: torch.dtype | None,
                 family: str | None = None) -> None:
        self.name, self.kind, self.source, self.factory = name, kind, source, factory
        self.family = family
        self.dtype = dtype
        self.keep_loaded = False
        self.last_used: float | None = None
        self._seq = 0  # LRU order
        self._manager = weakref.ref(manager)
        self._module: nn.Module | None = None
        self._master: dict[str, torch.Tensor] = {}  # canonical key -> host tensor
        self._host_buffers: dict[tuple[int, str], torch.Tensor] = {}
        self._flat_host: torch.Tensor | None = None
        self._flat_device: torch.Tensor | None = None
        self._units: list = []
        self._resident: set[str] = set()  # prefixes of units on the device
        self._on_device = False
        self._streamer: Streamer | None = None
        self._applied: tuple = ()
        self._applied_patches: dict = {}
        self._in_use = 0
        self._transient = False
        self._refs: weakref.WeakSet[ModelRef] = weakref.WeakSet()
        self.nbytes = 0
        self.buffer_bytes = 0
        self.file_identity: str | None = None  # of ``source`` when registered (folders.identity)

    # -- handle -------------------------------------------------------------------------------
    def ref(self, holder: str | None = None) -> ModelRef:
        """A new unpatched handle onto this model."""
        return ModelRef(self, holder=holder)

    def _track(self, ref: ModelRef) -> None:
        self._refs.add(ref)

    def parameter_names(self) -> set[str]:
        """Canonical parameter names (builds the model from its factory if never built)."""
        if not self._master:
            mgr = self._manager()
            if mgr is None:
                raise ModelLoadError(f"model {self.name!r} outlived its manager")
            mgr._ensure_built(self)
        return set(self._master)

    def host_weight(self, key: str) -> torch.Tensor:
        """The unpatched host (master) copy of parameter ``key`` (builds the model if unloaded)."""
        self.parameter_names()
        return self._master[key]

    def parameter_shapes(self) -> dict[str, torch.Size]:
        """Canonical parameter name -> shape (builds the model like :meth:`parameter_names`)."""
        self.parameter_names()
        return {k: t.shape for k, t in self._master.items()}

    @property
    def location(self) -> str:
        """"gpu" (on the compute device), "partial", "cpu" or "unloaded" — the manager's state.

        What people are shown is :attr:`where`, which differs on a CPU-only manager.
        """
        if self._module is None:
            return "unloaded"
        if self._streamer is not None:
            return "partial"
        return "gpu" if self._on_device else "cpu"

    @property
    def where(self) -> str:
        """:attr:`location` as shown in tables, panels and summaries.

        A manager that computes on the CPU shows "cpu" for a model on its compute device (there
        is no second place for the weights), unless a fake capacity or a budget puts it in
        accounting mode, where "gpu" stands for the simulated device.
        """
        location = self.location
        manager = self._manager()
        if (location == "gpu" and manager is not None and manager.device.type == "cpu"
                and manager.capacity_bytes is None and manager.budget_bytes is None):
            return "cpu"
        return location

    @property
    def loaded_bytes(self) -> int:
        """Bytes this model holds on the compute device."""
        if not self._on_device:
            return 0
        return self.buffer_bytes + sum(u.nbytes for u in self._units if u.prefix in self._resident)

    @property
    def pinned(self) -> bool:
        """Whether the host copy lives in one pinned buffer."""
        return self._flat_host is not None and self._flat_host.is_pinned()

    @property
    def in_use(self) -> bool:
        """Whether a node is running with this model now (not evictable)."""
        return self._in_use > 0

    @property
    def streamer(self) -> Streamer | None:
        """The streaming hooks when partially loaded."""
        return self._streamer

    def __repr__(self) -> str:
        return f"ManagedModel({self.name!r}, kind={self.kind!r}, location={self.location!r})"
