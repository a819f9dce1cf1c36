"""MemoryBudget: LRU eviction beyond separate RAM and VRAM byte budgets."""

from __future__ import annotations

import pytest
import torch

from comfy_notebook._units import parse_bytes
from comfy_notebook.engine.cache import Cache
from comfy_notebook.engine.policies import MemoryBudget, split_bytes


class _FakeCudaTensor:
    """Duck-typed tensor that reports a GPU device (there is no GPU here)."""

    def __init__(self, nbytes: int) -> None:
        self._n = nbytes
        self.device = type("D", (), {"type": "cuda"})()

    def element_size(self) -> int:
        return 1

    def numel(self) -> int:
        return self._n


def test_split_bytes_by_device():
    value = ({"samples": torch.zeros(10, dtype=torch.float32)}, [_FakeCudaTensor(100)], b"x")
    assert split_bytes(value) == (40, 100)


def test_lru_eviction_per_budget():
    cache = Cache(MemoryBudget(ram_bytes=100, vram_bytes=150))
    cache.put("r1", ([torch.zeros(10)],), None)  # 40 B RAM
    cache.put("g1", ([_FakeCudaTensor(100)],), None)
    cache.put("r2", ([torch.zeros(10)],), None)
    assert cache.keys() == ["r1", "g1", "r2"]
    cache.get("r1")  # r1 becomes most recent
    cache.put("g2", ([_FakeCudaTensor(100)],), None)  # VRAM 200 > 150: oldest GPU entry goes
    assert cache.keys() == ["r2", "r1", "g2"]
    cache.put("r3", ([torch.zeros(10)],), None)  # RAM 120 > 100: oldest RAM entry (r2) goes
    assert cache.keys() == ["r1", "g2", "r3"]
    assert cache.stats().evictions == 2


def test_parse_bytes():
    assert parse_bytes("512MB") == 512 << 20 and parse_bytes("2g") == 2 << 30 and parse_bytes("10") == 10
    with pytest.raises(ValueError, match="expected a size"):
        parse_bytes("GB")
    with pytest.raises(ValueError, match=">= 0"):
        MemoryBudget(ram_bytes=-1)
