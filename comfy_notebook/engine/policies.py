"""Every cache eviction policy, and the one byte-size walker they measure entries with.

A policy chooses keys to evict from the cache's entries, ordered least to most recently used.
:class:`KeepAll` never evicts; :class:`LRU` caps the number of entries;
:class:`ByteBudget` caps the total bytes; :class:`MemoryBudget` caps host RAM and GPU memory
separately.  A cache made without a policy gets :func:`default_policy`: a ``MemoryBudget`` of a
quarter of the machine's RAM (at most 16 GiB, at least 1 GiB) and 2 GiB of GPU memory, so a long
session of reruns with new seeds stays bounded (ComfyUI's ``--cache-ram`` pressure cache is the
model: least recently used outputs go first; what the running prompt still needs is recomputed
or, in real mode, restored from the handles the notebook holds).  Sizes are found by duck typing (torch is never imported): a tensor counts on its
device, anything else with ``nbytes`` counts as RAM.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["DEFAULT_VRAM_BYTES", "LRU", "ByteBudget", "CachePolicy", "KeepAll", "MemoryBudget",
           "default_policy", "default_ram_budget", "sizeof", "split_bytes"]

_MAX_DEPTH = 32


def split_bytes(value: Any) -> tuple[int, int]:
    """(RAM bytes, GPU bytes) held by ``value``, recursing into tuples, lists and dicts."""
    ram = vram = 0
    stack = [(value, 0)]
    seen: set[int] = set()
    while stack:
        item, depth = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        element_size, numel = getattr(item, "element_size", None), getattr(item, "numel", None)
        if callable(element_size) and callable(numel) and not isinstance(item, type):
            size = 0
            with contextlib.suppress(Exception):
                size = int(element_size()) * int(numel())
            device = getattr(item, "device", None)
            if device is not None and getattr(device, "type", "cpu") not in ("cpu", "meta"):
                vram += size
            else:
                ram += size
            continue
        nbytes = getattr(item, "nbytes", None)
        if isinstance(nbytes, int) and not isinstance(item, type):
            ram += nbytes
            continue
        if depth < _MAX_DEPTH:
            if isinstance(item, tuple | list):
                stack.extend((v, depth + 1) for v in item)
            elif isinstance(item, dict):
                stack.extend((v, depth + 1) for v in item.values())
    return ram, vram


def sizeof(value: Any) -> int:
    """Bytes held by ``value`` wherever they live (see :func:`split_bytes`)."""
    ram, vram = split_bytes(value)
    return ram + vram


class CachePolicy(Protocol):
    """Eviction policy: chooses keys to evict from entries ordered least- to most-recent.

    An entry has ``nbytes`` (its total) and ``ram_bytes`` / ``vram_bytes`` (the split).
    """

    def victims(self, entries: OrderedDict[str, Any], total_bytes: int) -> Iterable[str]:
        """Keys to evict now (the most recently stored entry last)."""
        ...


class KeepAll:
    """Never evicts; release entries explicitly (``cache.release``, ``release_tag``)."""

    def victims(self, entries: OrderedDict[str, Any], total_bytes: int) -> Iterable[str]:
        """No victims."""
        return ()

    def __repr__(self) -> str:
        return "KeepAll()"


class LRU:
    """Keeps at most ``max_entries`` entries, evicting the least recently used (0 keeps none)."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError(f"LRU max_entries must be >= 0, received {max_entries}")
        self.max_entries = max_entries

    def victims(self, entries: OrderedDict[str, Any], total_bytes: int) -> Iterable[str]:
        """The oldest keys beyond ``max_entries``."""
        excess = len(entries) - self.max_entries
        return [k for _, k in zip(range(max(excess, 0)), entries, strict=False)]

    def __repr__(self) -> str:
        return f"LRU({self.max_entries})"


class MemoryBudget:
    """Evict least recently used entries beyond a RAM and a GPU-memory byte budget.

    An entry is only evicted for a budget it contributes to.

    Parameters
    ----------
    ram_bytes, vram_bytes:
        The budgets; ``None`` leaves that memory unbounded.

    Examples
    --------
    >>> session.cache.policy = MemoryBudget(ram_bytes=8 << 30, vram_bytes=2 << 30)  # doctest: +SKIP
    """

    def __init__(self, ram_bytes: int | None = None, vram_bytes: int | None = None) -> None:
        for name, v in (("ram_bytes", ram_bytes), ("vram_bytes", vram_bytes)):
            if v is not None and v < 0:
                raise ValueError(f"{type(self).__name__} {name} must be >= 0 or None, received {v}")
        self.ram_bytes = ram_bytes
        self.vram_bytes = vram_bytes

    def victims(self, entries: OrderedDict[str, Any], total_bytes: int) -> Iterable[str]:
        """Oldest keys to drop until both budgets hold."""
        sizes = {k: (e.ram_bytes, e.vram_bytes) for k, e in entries.items()}
        ram = sum(s[0] for s in sizes.values())
        vram = sum(s[1] for s in sizes.values())
        ram_cap = self.ram_bytes if self.ram_bytes is not None else float("inf")
        vram_cap = self.vram_bytes if self.vram_bytes is not None else float("inf")
        out = []
        for key, (r, v) in sizes.items():
            if ram <= ram_cap and vram <= vram_cap:
                break
            if (ram > ram_cap and r) or (vram > vram_cap and v):
                out.append(key)
                ram -= r
                vram -= v
        return out

    def __repr__(self) -> str:
        return f"MemoryBudget(ram_bytes={self.ram_bytes}, vram_bytes={self.vram_bytes})"


class ByteBudget:
    """Evicts least recently used entries while the total size exceeds ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"ByteBudget max_bytes must be >= 0, received {max_bytes}")
        self.max_bytes = max_bytes

    def victims(self, entries: OrderedDict[str, Any], total_bytes: int) -> Iterable[str]:
        """The oldest keys until the remainder fits."""
        out = []
        for key, entry in entries.items():
            if total_bytes <= self.max_bytes:
                break
            out.append(key)
            total_bytes -= entry.nbytes
        return out

    def __repr__(self) -> str:
        return f"ByteBudget({self.max_bytes})"


DEFAULT_VRAM_BYTES = 2 << 30  # GPU memory the default policy lets cached outputs hold


def default_ram_budget() -> int:
    """A quarter of the machine's physical memory, clamped to [1 GiB, 16 GiB]."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 16 GiB of RAM
        total = 16 << 30
    return int(min(16 << 30, max(1 << 30, total // 4)))


def default_policy() -> MemoryBudget:
    """The policy of a cache made without one: ``MemoryBudget(default_ram_budget(), 2 GiB)``."""
    return MemoryBudget(ram_bytes=default_ram_budget(), vram_bytes=DEFAULT_VRAM_BYTES)
