"""Long sessions (issue 19): the default cache is bounded by a stated budget (ComfyUI's RAM
pressure cache as the model: least recently used outputs go first) and keeps the caching
semantics (the latest prompt is served from the cache); 1,000 reruns of a generation cell with
changing seeds and prompts keep RSS flat, the cache within its budget, and event subscribers,
models in use and reserved memory from accumulating."""

from __future__ import annotations

import gc
import os
import pathlib

import pytest
from harness import new_session, tiny_prompt

from comfy_notebook.engine.cache import Cache
from comfy_notebook.engine.policies import DEFAULT_VRAM_BYTES, MemoryBudget, default_ram_budget


def test_default_policy_is_a_stated_budget() -> None:
    cache = Cache()
    assert isinstance(cache.policy, MemoryBudget)
    assert cache.policy.ram_bytes == default_ram_budget()
    assert (1 << 30) <= cache.policy.ram_bytes <= (16 << 30)
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert cache.policy.ram_bytes == min(16 << 30, max(1 << 30, total // 4))
    assert cache.policy.vram_bytes == DEFAULT_VRAM_BYTES == 2 << 30


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reruns(root: pathlib.Path, n: int, budget: int) -> None:
    s = new_session(root)
    assert isinstance(s.cache.policy, MemoryBudget)
    s.cache.policy.ram_bytes = budget  # the default policy, its budget scaled to the tiny model
    subscribers = (len(s._subscribers), None)
    peak, warm = 0, None
    for i in range(n):
        api = tiny_prompt(seed=5000 + i)
        api["6"]["inputs"]["text"] = f"a photo, variation {i % 7}"
        result = s.run_prompt(api)
        assert "3" in result.executed  # a new seed samples anew
        peak = max(peak, s.cache.stats().bytes)
        if i == n // 10:
            gc.collect()
            warm = _rss()
        if i == 0:
            subscribers = (len(s._subscribers), len(s.models._subscribers))
    assert peak <= budget
    assert s.cache.stats().evictions > 0
    again = s.run_prompt(api)  # the latest prompt is still served from the cache
    assert again.executed <= {"9"}
    assert (len(s._subscribers), len(s.models._subscribers)) == subscribers
    assert not any(m.in_use for m in s.models._models.values()) and s.models._reserved == 0
    gc.collect()
    drift = _rss() - warm  # type: ignore[operator]
    assert drift < 64 << 20, f"RSS grew {drift / 2**20:.1f} MiB over {n} reruns"


def test_reruns_with_new_seeds_stay_within_the_default_policy_budget(tiny_root: pathlib.Path) -> None:
    _reruns(tiny_root, 60, 1 << 20)


@pytest.mark.slow
def test_thousand_reruns_stay_flat(tiny_root: pathlib.Path) -> None:
    """The issue's long session: 1,000 reruns (about two minutes on one core)."""
    _reruns(tiny_root, 1000, 2 << 20)
