"""Engine overhead: a 1,000-node graph of trivial nodes, cold and fully cached.

Run: ``python benchmarks/engine_overhead.py`` (writes benchmarks/results/engine_overhead.txt).
Goal: a fully cached 1,000-node rerun under 50 ms.  Also measures the fixed per-run cost of a
one-node prompt (real mode runs many of them).
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Any

from comfy_notebook._session import Session

N = 1000


class Const:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 0})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value: int) -> tuple[int]:
        return (value,)


class Add:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"a": ("INT",), "b": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, a: int, b: int) -> tuple[int]:
        return (a + b,)


class Out:
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, value: int) -> dict[str, Any]:
        return {"ui": {"value": [value]}, "result": (value,)}


def graph(n: int, seed: int) -> dict[str, Any]:
    """Adds where node i takes node i-1 and node i//2 (every node feeds the output);
    the last 10 nodes are output nodes."""
    api: dict[str, Any] = {"0": {"inputs": {"value": seed}, "class_type": "Const"}}
    for i in range(1, n - 10):
        api[str(i)] = {"inputs": {"a": [str(i - 1), 0], "b": [str(i // 2), 0]}, "class_type": "Add"}
    for j in range(n - 10, n):
        api[str(j)] = {"inputs": {"value": [str(j - 10), 0]}, "class_type": "Out"}
    return api


def measure(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> str:
    s = Session()
    s.register({"Const": Const, "Add": Add, "Out": Out})
    seeds = iter(range(10**6))

    def cold() -> None:
        r = s.run_prompt(graph(N, next(seeds)))
        assert len(r.executed) == N

    cold_t = measure(cold, 5)
    api = graph(N, -1)
    s.run_prompt(api)

    def cached() -> None:
        r = s.run_prompt(api)
        assert not r.executed and len(r.cached) == N

    cached_t = measure(cached, 20)
    one = {"1": {"inputs": {"value": 5}, "class_type": "Out"}}
    s.run_prompt(one)
    one_t = measure(lambda: s.run_prompt(one), 2000)
    lines = [
        f"engine overhead, {N}-node graph of trivial nodes ({platform.python_version()}, {platform.machine()}, "
        f"{platform.processor() or 'cpu'}, 2-core machine)",
        f"cold run:          {cold_t * 1e3:8.2f} ms  ({cold_t / N * 1e6:6.1f} us/node)",
        f"fully cached rerun:{cached_t * 1e3:8.2f} ms  ({cached_t / N * 1e6:6.1f} us/node)  goal < 50 ms",
        f"one-node prompt, cached: {one_t * 1e6:8.1f} us per run_prompt",
        "command: python benchmarks/engine_overhead.py",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    text = main()
    print(text)
    out = Path(__file__).parent / "results" / "engine_overhead.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
