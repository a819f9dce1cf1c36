"""A 64-image sweep in this process vs on two local Ray workers (CPU, tiny SD1 checkpoint).

Run: ``python benchmarks/sweep_backends.py`` (writes benchmarks/results/sweep_backends_cpu.txt).
Both backends are warmed up first (checkpoint loaded, text encoded), then the same 32 seeds x 2
cfg grid runs through ``session.sweep``: throughput is images per second of wall time.  The
per-task overhead is the round trip of a fully cached prompt (nothing runs but the cache
lookup): through the session's queue in-process, and through the queue, Ray's scheduler, the
actor and the object store (one PNG back) on Ray.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

SIZE, STEPS = 64, 4
GRID = {"cfg": [4.0, 8.0], "seed": list(range(32))}


def prompt(seed: int = 0) -> dict[str, Any]:
    from comfy_notebook.demo import default_prompt

    api = default_prompt()
    api["4"]["inputs"]["ckpt_name"] = "tiny.safetensors"
    api["5"]["inputs"].update(width=SIZE, height=SIZE)
    api["3"]["inputs"].update(seed=seed, steps=STEPS)
    return api


def sweep_rate(session: Any) -> tuple[float, float]:
    t0 = time.perf_counter()
    table = session.sweep(prompt(), grid=GRID)
    wall = time.perf_counter() - t0
    rows = table.to_dict("records") if hasattr(table, "to_dict") else table
    assert len(rows) == 64
    return 64 / wall, wall


def round_trip(session: Any, n: int = 40) -> float:
    api = prompt(seed=10**6)
    session.submit(api).result()  # now cached where it runs
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        result = session.submit(api).result()
        times.append(time.perf_counter() - t0)
        assert not result.executed
    return statistics.median(times)


def main() -> str:
    import ray

    from comfy_notebook._session import Session
    from comfy_notebook.backends import RayBackend
    from comfy_notebook.testing import make_checkpoint

    root = Path(tempfile.mkdtemp(prefix="sweep_backends_"))
    make_checkpoint(root / "checkpoints" / "tiny.safetensors", preset="sd1-tiny", seed=0)

    local = Session(models_dir=root, output_dir=root / "out_local")
    local.options = {"progress": False}
    local.submit(prompt(seed=99_999)).result()  # warm: load and encode
    local_rate, local_wall = sweep_rate(local)
    local_rt = round_trip(local)
    local.queue.close()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = Session(models_dir=root, output_dir=root / "out_ray",
                         backend=RayBackend(num_workers=2, num_cpus=1))
        warm = [remote.submit(prompt(seed=70000 + i)) for i in range(2)]
        for fut in warm:
            fut.result()
        ray_rate, ray_wall = sweep_rate(remote)
        ray_rt = round_trip(remote)
        loads = {w: sum(s["loads"].values()) for w, s in remote.backend.stats().items()}
        remote.queue.close()
        remote.backend.close()
    finally:
        ray.shutdown()
    torch_threads = os.environ.get("OMP_NUM_THREADS", "default")
    lines = [
        f"64-image sweep (32 seeds x 2 cfg), tiny SD1, {SIZE} px, {STEPS} steps, euler; "
        f"{platform.python_version()} {platform.machine()}, {os.cpu_count()} CPUs (shared machine), "
        f"OMP_NUM_THREADS={torch_threads}",
        f"in-process:        {local_rate:6.2f} images/s  ({local_wall:6.1f} s)",
        f"Ray, 2 CPU workers:{ray_rate:6.2f} images/s  ({ray_wall:6.1f} s)  "
        f"ratio Ray/in-process {ray_rate / local_rate:5.2f}x",
        f"per-task overhead (cached prompt round trip): in-process {local_rt * 1e3:6.2f} ms, "
        f"Ray {ray_rt * 1e3:6.2f} ms (+{(ray_rt - local_rt) * 1e3:.2f} ms per task)",
        f"checkpoint loads per Ray worker: {loads}",
        "command: python benchmarks/sweep_backends.py",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    text = main()
    print(text)
    out = Path(__file__).parent / "results" / "sweep_backends_cpu.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
