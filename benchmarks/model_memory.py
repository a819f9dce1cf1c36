"""Model memory benchmark: reload speed, file-to-device speed, low-budget run, LoRA switching.

Usage::

    python benchmarks/model_memory.py            # CUDA when present, else the CPU mode
    python benchmarks/model_memory.py --cpu      # bookkeeping costs measurable without a GPU
    python benchmarks/model_memory.py --gb 0.2   # smaller stand-in model

(a) reload of an offloaded SD1.5-sized UNet (1.72 GB fp16), GB/s (goal >= 45 on an H100);
(b) checkpoint file (page cache warm) to the device, GB/s (goal >= 20);
(c) a UNet-sized model run step by step under a 2 GB budget: max_memory_allocated must stay
    under budget + reserve;
(d) switching the same base between two LoRA clones: only the patched layers move.
The stand-in model is a stack of Linear layers with SD1.5's parameter bytes (random weights).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from comfy_notebook.runtime import DevicePolicy, LoraPatch, ModelManager

GB = 1e9


def stand_in(total_bytes: int, dtype: torch.dtype, width: int = 2048) -> nn.Sequential:
    """Linear layers of ``width`` totalling about ``total_bytes`` (SD1.5: 860M params, fp16)."""
    per = (width * width + width) * torch.empty((), dtype=dtype).element_size()
    layers = [nn.Linear(width, width, dtype=dtype) for _ in range(max(1, total_bytes // per))]
    return nn.Sequential(*layers)


def bench(device: torch.device, total: int, tmp: str) -> None:
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    policy = DevicePolicy.cuda(0) if cuda else DevicePolicy.cpu()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    mgr = ModelManager(policy)
    t0 = time.perf_counter()
    model = mgr.register("unet", lambda: stand_in(total, dtype), kind="unet", dtype=dtype)
    mgr.load(model)
    print(f"built + first load {model.nbytes / GB:.2f} GB in {time.perf_counter() - t0:.2f} s, "
          f"pinned={model.pinned}")
    # (a) reload of an offloaded model
    times = []
    for _ in range(3):
        mgr.offload(model)
        sync()
        t0 = time.perf_counter()
        mgr.load(model)
        sync()
        times.append(time.perf_counter() - t0)
    best = min(times)
    if cuda:
        print(f"(a) reload offloaded: {model.nbytes / GB / best:.1f} GB/s; goal >= 45 on H100")
    else:
        print(f"(a) offload + reload bookkeeping (no copy on CPU): {best * 1e6:.0f} us")
    # (b) file (page cache warm) -> device
    path = os.path.join(tmp, "unet.safetensors")
    save_file({k: v.contiguous() for k, v in model._master.items()}, path)
    load_file(path)  # warm the page cache

    def from_file() -> nn.Module:
        sd = load_file(path)
        m = nn.Sequential(*[nn.Linear(2048, 2048, dtype=dtype, device="meta")
                            for _ in range(len(sd) // 2)])
        m.load_state_dict(sd, assign=True)
        return m

    mgr.unregister(model)
    fresh = mgr.register("from_file", from_file, kind="unet", dtype=dtype)
    sync()
    t0 = time.perf_counter()
    mgr.load(fresh)
    sync()
    took = time.perf_counter() - t0
    print(f"(b) file -> {device}: {fresh.nbytes / GB / took:.1f} GB/s; goal >= 20 on H100")
    # (c) low budget: streamed forward
    budget = 2 * 1024**3 if cuda else fresh.nbytes // 4
    mgr.unload_all()
    mgr.set_budget(budget, reserve_bytes=256 << 20 if cuda else 0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    x = torch.randn(2, 2048, dtype=dtype, device=device)  # CFG batch
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(3):
            with mgr.use(fresh, memory_required=64 << 20) as m:
                y = m(x)
    sync()
    print(f"(c) 3 steps under {budget / GB:.2f} GB budget: {fresh.location}, "
          f"{(time.perf_counter() - t0) / 3 * 1e3:.0f} ms/step, finite={bool(y.isfinite().all())}")
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base_alloc
        ok = peak <= budget + mgr.reserve_bytes
        print(f"    peak allocated {peak / GB:.2f} GB <= budget + reserve: {ok}")
    # (d) LoRA clone switching
    mgr.set_budget(None)
    keys = [k for k in fresh.parameter_names() if k.endswith("weight")][:8]
    torch.manual_seed(0)
    lora = {k: LoraPatch(torch.randn(2048, 16, dtype=dtype), torch.randn(16, 2048, dtype=dtype), 16.0)
            for k in keys}
    a, b = fresh.ref().with_patches(lora, 0.5), fresh.ref().with_patches(lora, 1.0)
    mgr.load(fresh)
    with mgr.use(a):
        pass
    before = mgr.stats
    sync()
    t0 = time.perf_counter()
    with mgr.use(b):
        sync()
    took = time.perf_counter() - t0
    after = mgr.stats
    moved = after.bytes_moved_to_device - before.bytes_moved_to_device
    patched = sum(fresh._master[k].numel() * fresh._master[k].element_size() for k in keys)
    print(f"(d) LoRA switch: {after.weights_patched - before.weights_patched} weights re-patched "
          f"of {len(fresh.parameter_names())}, {moved / 1e6:.1f} MB moved (patched layers "
          f"{patched / 1e6:.1f} MB), {took * 1e3:.1f} ms")
    print(f"stats: {mgr.stats}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="CPU mode even when CUDA is present")
    parser.add_argument("--gb", type=float, default=1.72, help="model size in GB (fp16 on CUDA)")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("No CUDA device: GPU figures (a)-(d) need one. Running the CPU mode, which measures "
              "bookkeeping and patching costs only.")
        args.cpu = True
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    total = int(args.gb * GB) if not args.cpu else int(min(args.gb, 0.2) * GB)
    with tempfile.TemporaryDirectory() as tmp:
        bench(device, total, tmp)


if __name__ == "__main__":
    main()
