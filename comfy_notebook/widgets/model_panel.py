"""``ModelPanel``: the session's managed models, memory bars and load/offload/unload buttons."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import traitlets

from comfy_notebook._units import human_bytes
from comfy_notebook.widgets._base import STATIC, View

__all__ = ["ModelPanel", "describe_move", "host_memory"]

_ROW_FIELDS = ("name", "kind", "family", "source", "dtype", "bytes", "loaded_bytes", "location",
               "keep_loaded", "pinned", "graphs", "graph_bytes", "world")


def host_memory() -> tuple[int, int]:
    """(total, available) host RAM in bytes, from ``sysconf`` (0, 0 where unavailable)."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        return 0, 0


class ModelPanel(View):
    """A live table of a ``ModelManager``'s models, with buttons wired to its verbs.

    Parameters
    ----------
    manager:
        The session's model manager (``session.services.models``).
    cache:
        Optional engine cache whose ``stats()`` bytes are shown as "cache" in the RAM bar.
    """

    _esm = STATIC / "model_panel.js"
    rows: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    memory = traitlets.Dict().tag(sync=True)
    #: the memory plan as it ran: the latest moves (oldest first), each with its reason and, for
    #: a partial load, what stays on the device and what is streamed per step
    moves: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    MAX_MOVES = 12

    def __init__(self, manager: Any, *, cache: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manager = manager
        self.cache = cache
        self._unsubscribe: Callable[[], None] | None = manager.subscribe(self._on_moved)
        self.refresh()

    @classmethod
    def for_session(cls, session: Any = None) -> ModelPanel:
        """The panel of ``session`` (default: the current session)."""
        if session is None:
            from comfy_notebook._session import session as current_session

            session = current_session()
        manager = session.services.models_loaded
        if manager is None:
            raise LookupError("no models loaded: this session has no model manager yet "
                              "(load a checkpoint first)")
        return cls(manager, cache=getattr(session, "cache", None))

    def _on_moved(self, event: Any) -> None:
        """ModelMoved events (from any thread): log the move, re-read the manager."""
        self.refresh()
        size = next((r["bytes"] for r in self.rows if r["name"] == getattr(event, "name", None)), 0)
        move = {"name": event.name, "source": event.source, "target": event.target,
                "bytes": int(event.nbytes), "reason": event.reason, "seconds": float(event.seconds),
                "streamed": max(0, int(size) - int(event.nbytes)) if event.target == "partial" else 0}
        self.moves = [*self.moves, move][-self.MAX_MOVES:]

    def mode(self) -> str:
        """``"gpu"`` (a real accelerator), ``"simulated"`` (a CPU manager with a fake capacity or a
        budget: accounting mode) or ``"cpu"`` (models run from RAM: there is nowhere to load to)."""
        device = getattr(self.manager, "device", None)
        if getattr(device, "type", None) != "cpu":
            return "gpu"
        if getattr(self.manager, "capacity_bytes", None) is not None or getattr(self.manager, "budget_bytes", None) is not None:
            return "simulated"
        return "cpu"

    def refresh(self) -> None:
        """Re-read rows and memory figures from the manager (the single source of truth).

        Every figure comes from the same rows: the device bar's "models" is the sum of the rows'
        bytes on the device, so a ``partial`` row and the bar always agree.
        """
        mode = self.mode()
        rows = []
        for info in self.manager.list():
            row: dict[str, Any] = {f: getattr(info, f, None) for f in _ROW_FIELDS}
            row["family"] = row["family"] or row["kind"]
            if row["world"] != "comfy_notebook":  # an attached ComfyUI's model: say whose
                row["family"] = f"{row['family']} [{row['world']}]"
            row["dtype"] = str(row["dtype"]).replace("torch.", "") if row["dtype"] else ""
            size = int(row["bytes"] or 0)
            on_device = int(row["loaded_bytes"] or 0) if mode != "cpu" else 0
            location = str(row["location"])
            row["bytes"] = size
            row["device_bytes"] = on_device
            row["host_bytes"] = max(0, size - on_device) if location != "unloaded" else 0
            row["actions"] = self._actions(mode, location)
            rows.append(row)
        self.rows = rows
        self.memory = self._memory(rows, mode)

    @staticmethod
    def _actions(mode: str, location: str) -> list[str]:
        """The buttons that do something for a row in this mode."""
        if location == "unloaded":
            return [] if mode == "cpu" else ["load"]
        if mode == "cpu":
            return ["unload"]  # the compute device is the CPU: load / offload would move nothing
        if location == "gpu":
            return ["offload", "unload"]
        if location == "partial":
            return ["load", "offload", "unload"]
        return ["load", "unload"]

    def _memory(self, rows: list[dict[str, Any]], mode: str) -> dict[str, Any]:
        """Bars: device (models, free, budget) and host (models, cache, free, total)."""
        on_device = sum(r["device_bytes"] for r in rows)
        on_host = sum(r["host_bytes"] for r in rows)
        device = getattr(self.manager, "device", None)
        budget = getattr(self.manager, "budget_bytes", None)
        free: int | None = None
        if mode != "cpu":
            try:
                free = int(self.manager.memory_free(device))
                free = None if free >= 1 << 60 else free  # "no limit"
            except Exception:  # memory figures are informative only
                free = None
        cache_bytes = 0
        if self.cache is not None:
            stats = self.cache.stats()
            cache_bytes = int(stats.get("bytes", 0) if isinstance(stats, dict)
                              else getattr(stats, "bytes", 0))
        total, available = host_memory()
        return {
            "mode": mode,
            "device": {"name": _device_label(self.manager, device), "models": on_device, "free": free,
                       "budget": budget},
            "host": {"models": on_host, "cache": cache_bytes, "free": available, "total": total},
        }

    def _model(self, name: str) -> Any:
        """The managed model called ``name``, or a clear error listing the names."""
        names = [info.name for info in self.manager.list()]
        if name not in names:
            raise LookupError(f"no model named {name!r}; the manager has {names}")
        return name  # the manager's verbs accept names

    def action_load(self, name: str) -> str:
        """The load button: put the model on the compute device."""
        if self.mode() == "cpu":
            return "no GPU here: models run from RAM, so load and offload move nothing"
        self.manager.load(self._model(name))
        self.refresh()
        return f"loaded {name}"

    def action_offload(self, name: str) -> str:
        """The offload button: move the model to the CPU."""
        if self.mode() == "cpu":
            return "no GPU here: models run from RAM, so load and offload move nothing"
        self.manager.offload(self._model(name))
        self.refresh()
        return f"offloaded {name}"

    def action_unload(self, name: str) -> str:
        """The unload button: free the weights (the handle reloads them on next use)."""
        self.manager.unload(self._model(name))
        self.refresh()
        return f"unloaded {name}"

    def action_unload_all(self) -> str:
        """The unload-all button."""
        self.manager.unload_all()
        self.refresh()
        return "unloaded all models"

    def action_refresh(self) -> str:
        """The refresh button."""
        self.refresh()
        return ""

    def close(self) -> None:
        """Stop following the manager and close the widget."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        super().close()

    def text(self) -> str:
        """The model table as text (what ``%comfy models`` prints in a terminal)."""
        header = f"{'name':<28} {'family':<8} {'dtype':<9} {'size':>9} {'on device':>9} {'location':<9}"
        lines = [header, "-" * len(header)]
        for r in self.rows:
            on_device = human_bytes(r["device_bytes"]) if self.memory.get("mode") != "cpu" else "-"
            lines.append(f"{r['name']:<28} {r['family'] or '':<8} {r['dtype']:<9} "
                         f"{human_bytes(r['bytes']):>9} {on_device:>9} {r['location']:<9}")
        if not self.rows:
            lines.append("(no models)")
        dev, host = self.memory["device"], self.memory["host"]
        if self.memory["mode"] == "cpu":
            lines.append("compute device: cpu (no GPU: models run from RAM; load/offload do not apply)")
        else:
            lines.append(f"{dev['name']}: models {human_bytes(dev['models'])}, free "
                         f"{human_bytes(dev['free'])}, budget {human_bytes(dev['budget'])}")
        lines.append(f"RAM: models {human_bytes(host['models'])}, cache {human_bytes(host['cache'])}"
                     f", free {human_bytes(host['free'])} of {human_bytes(host['total'])}")
        if self.moves:
            lines.append("memory plan (latest moves, oldest first):")
            lines += ["  " + describe_move(m) for m in self.moves]
        return "\n".join(lines)


def describe_move(move: dict[str, Any]) -> str:
    """One line of the plan: ``unet: cpu -> partial, 18.0 GB on the device, 22.9 GB streamed per step (partial load)``."""
    what = f"{move['name']}: {move['source']} -> {move['target']}"
    if move["target"] == "partial":
        what += f", {human_bytes(move['bytes'])} on the device, {human_bytes(move['streamed'])} streamed per step"
    elif move["target"] in ("gpu", "cpu"):
        what += f", {human_bytes(move['bytes'])}"
    return f"{what} ({move['reason']})"


def _device_label(manager: Any, device: Any) -> str:
    """The device bar's title; a CPU manager with a fake capacity simulates a GPU."""
    capacity = getattr(manager, "capacity_bytes", None)
    if getattr(device, "type", None) == "cpu" and capacity is not None:
        return "simulated gpu"
    return str(device or "device")
