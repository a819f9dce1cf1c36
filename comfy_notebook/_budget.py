"""A cache policy with two byte budgets: host RAM and GPU memory (VRAM).

Entries are evicted least recently used first while the bytes of cached values in RAM exceed
``ram_bytes`` or the bytes of cached values on a GPU exceed ``vram_bytes``; an entry is only
evicted for a budget it contributes to.  Sizes are found by duck typing (torch is never
imported): a tensor counts on its device, anything else with ``nbytes`` counts as RAM.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from comfy_notebook._units import parse_bytes

__all__ = ["MemoryBudget", "parse_bytes", "split_bytes"]


def split_bytes(value: Any) -> tuple[int, int]:
    """(RAM bytes, VRAM bytes) held by ``value``, recursing into tuples, lists and dicts."""
    ram = vram = 0
    stack = [(value, 0)]
    seen: set[int] = set()
    while stack:
        item, depth = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        element_size, numel = getattr(item, "element_size", None), getattr(item, "numel", None)
        device = getattr(item, "device", None)
        if callable(element_size) and callable(numel) and device is not None:
            size = int(element_size()) * int(numel())
            if getattr(device, "type", "cpu") == "cpu":
                ram += size
            else:
                vram += size
            continue
        nbytes = getattr(item, "nbytes", None)
        if isinstance(nbytes, int) and not isinstance(item, type):
            ram += nbytes
            continue
        if depth < 16:
            if isinstance(item, tuple | list):
                stack.extend((v, depth + 1) for v in item)
            elif isinstance(item, dict):
                stack.extend((v, depth + 1) for v in item.values())
    return ram, vram


class MemoryBudget:
    """Evict least recently used entries beyond a RAM and a VRAM byte budget.

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
                raise ValueError(f"MemoryBudget {name} must be >= 0 or None, received {v}")
        self.ram_bytes = ram_bytes
        self.vram_bytes = vram_bytes
        self._sizes: dict[str, tuple[Any, tuple[int, int]]] = {}  # key -> (entry, split)

    def _split(self, key: str, entry: Any) -> tuple[int, int]:
        found = self._sizes.get(key)
        if found is not None and found[0] is entry:
            return found[1]
        split = split_bytes(entry.outputs)
        self._sizes[key] = (entry, split)
        return split

    def victims(self, entries: OrderedDict[str, Any], total_bytes: int) -> Iterable[str]:
        """Oldest keys to drop until both budgets hold."""
        for key in [k for k in self._sizes if k not in entries]:
            del self._sizes[key]
        sizes = {k: self._split(k, e) for k, e in entries.items()}
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
