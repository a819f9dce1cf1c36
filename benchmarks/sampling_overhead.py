"""Time per sampling step spent outside the model forward (sampler + CFG + denoiser + callback).

The model is a stub whose forward is timed separately; overhead = (step time with the stub) -
(stub forward time).  Shapes are SD1.5 at 512 px (latent [1, 4, 64, 64], context [1, 77, 768]),
CFG 8 (batch 2).  The ratio is against a reference SD1.5 step time on the GPU (default 12.3 ms,
the CUDA-graph replay speed of 81 it/s from design/performance.md; pass --step-ms to change).

    python benchmarks/sampling_overhead.py [--device cuda] [--out benchmarks/results/sampling_overhead_cpu.txt]
"""

from __future__ import annotations

import argparse
import time

import torch

from comfy_notebook.sampling import DiscreteSchedule, ksample


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--step-ms", type=float, default=12.3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    w = torch.randn(4, 4, device=device) * 0.01

    def stub(x, t, context, **kw):  # cheap forward: one small matmul over channels
        return torch.einsum("bchw,cd->bdhw", x, w)

    lines = [f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
             f"torch {torch.__version__}, steps {args.steps}, latent [1,4,64,64], cfg 8"]
    x = torch.randn(2, 4, 64, 64, device=device)
    t = torch.full((2,), 500.0, device=device)
    ctx = torch.randn(2, 77, 768, device=device)
    for _ in range(10):
        stub(x, t, ctx)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(200):
        stub(x, t, ctx)
    _sync(device)
    fwd_ms = (time.perf_counter() - t0) / 200 * 1e3
    latent = {"samples": torch.zeros(1, 4, 64, 64)}
    pos = [[torch.randn(1, 77, 768), {}]]
    neg = [[torch.randn(1, 77, 768), {}]]
    for name in ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde_gpu", "heun"):
        calls = [0]

        def counted(x, t, context, **kw):
            calls[0] += 1
            return stub(x, t, context)

        kw = dict(prediction="eps", schedule=DiscreteSchedule(), latent=latent, positive=pos, negative=neg,
                  seed=1, steps=args.steps, cfg=8.0, sampler_name=name, scheduler="karras", device=device,
                  callback=lambda info: None)
        ksample(counted, **kw)  # warm-up
        calls[0] = 0
        _sync(device)
        t0 = time.perf_counter()
        ksample(counted, **kw)
        _sync(device)
        total_ms = (time.perf_counter() - t0) * 1e3
        per_step = (total_ms - calls[0] * fwd_ms) / args.steps
        lines.append(f"{name:18s} overhead {per_step:7.3f} ms/step (whole call incl. setup, {calls[0]} forwards of "
                     f"{fwd_ms:.3f} ms subtracted) = {100 * per_step / args.step_ms:5.1f}% of a {args.step_ms} ms step")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
