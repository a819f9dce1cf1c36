"""Time per sampling step spent outside the model forward (sampler + CFG + denoiser + callback).

The model is a stub that costs ~0 (it returns its input), so everything timed is overhead.  The
per-step figure is the median interval between successive step callbacks over ``--repeat`` runs
(robust to a busy machine); one-time setup (sigmas, seeded noise, conditioning) is reported
separately as the best whole-call time minus steps x per-step.  Shapes: SD1.5 at
512 px (latent [1, 4, 64, 64], context [1, 77, 768]), CFG 8 (the forward runs at batch 2), and a
tiny 8x8 latent that isolates Python / dispatch cost (what bounds a GPU step).  Cases:

- ``fast``: one plain positive and negative entry (the CFG fast path);
- ``general``: two positive entries with strengths 0.7 / 0.3 (ComfyUI's ``calc_cond_batch`` path).

Samplers the installed package does not offer are skipped (so the script also times older code).

The ratio is against a reference SD1.5 step on the GPU (default 12.3 ms, the CUDA-graph replay
speed of 81 it/s from design/performance.md; pass --step-ms to change).

    python benchmarks/sampling_overhead.py [--device cuda] [--out benchmarks/results/sampling_overhead_cpu.txt]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import time
from typing import Any

import torch

from comfy_notebook.families.sd1 import SD15_LATENT
from comfy_notebook.sampling import SAMPLERS as OFFERED
from comfy_notebook.sampling import DiscreteSchedule, ksample
from comfy_notebook.sampling.model_sampling import ModelSampling

SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde_gpu", "heun", "uni_pc", "euler_cfg_pp",
            "dpmpp_2m_cfg_pp", "sa_solver")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _stub(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **kw: Any) -> torch.Tensor:
    """A model forward that costs ~0: eps = the input."""
    return x


def _stamp(stamps: list[float], device: torch.device, info: Any) -> None:
    """Step callback: record when the step's callback fires."""
    _sync(device)
    stamps.append(time.perf_counter())


def _time(kw: dict[str, Any], steps: int, device: torch.device, repeat: int) -> tuple[float, float]:
    """(median step-to-step interval in us, best whole-call time in ms) of ``ksample``."""
    intervals: list[float] = []
    best = float("inf")
    for _ in range(repeat):
        stamps: list[float] = []
        tick = functools.partial(_stamp, stamps, device)
        _sync(device)
        t0 = time.perf_counter()
        ksample(_stub, steps=steps, callback=tick, **kw)
        _sync(device)
        best = min(best, (time.perf_counter() - t0) * 1e3)
        intervals += [(b - a) * 1e6 for a, b in itertools.pairwise(stamps)]
    return statistics.median(intervals), best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings)")
    ap.add_argument("--step-ms", type=float, default=12.3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    lines = [f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
             f"cfg 8, stub forward = identity, {args.steps} steps x {args.repeat} runs; "
             "per-step = median interval between step callbacks"]
    g = torch.Generator().manual_seed(0)
    c1, c2, u = (torch.randn(1, 77, 768, generator=g) for _ in range(3))
    cases = {"fast": ([[c1, {}]], [[u, {}]]),
             "general": ([[c1, {"strength": 0.7}], [c2, {"strength": 0.3}]], [[u, {}]])}
    for hw in (64, 8):
        for case, (pos, neg) in cases.items():
            for sampler in [n for n in SAMPLERS if n in OFFERED] if case == "fast" else ("euler",):
                kw = dict(model_sampling=ModelSampling(DiscreteSchedule()), latent_format=SD15_LATENT,
                          latent={"samples": torch.zeros(1, 4, hw, hw)},
                          positive=pos, negative=neg, seed=1, cfg=8.0, sampler_name=sampler, scheduler="karras",
                          device=device)
                _time(kw, 3, device, 1)  # warm-up
                per_step_us, whole_ms = _time(kw, args.steps, device, args.repeat)
                setup_ms = whole_ms - per_step_us * args.steps / 1e3
                lines.append(f"latent {hw:2d}x{hw:<2d} {case:7s} {sampler:17s} {per_step_us:8.1f} us/step "
                             f"({100 * per_step_us / 1e3 / args.step_ms:5.2f}% of a {args.step_ms} ms step), "
                             f"setup {setup_ms:6.2f} ms")
                print(lines[-1], flush=True)
    text = "\n".join(lines)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
