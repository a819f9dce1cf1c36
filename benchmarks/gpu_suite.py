"""Everything a GPU run measures, in one process, on identical random weights.

One command for a lent GPU (minutes, once): our end-to-end ``Session.run_prompt`` sampling rate
(graphs on and off), our captured step, diffusers' eager UNet loop and diffusers' step replayed
as a CUDA graph (the limit), checkpoint file -> GPU (fast reads vs plain ``.to()``), offloaded
model -> GPU, cold start to the first image, VAE decode, CLIP encode, sampler overhead per step,
the SDPA backend, and SDXL when the tree has an SDXL preset.  Ratios are printed against the
peers and the limit; the results file names the device, driver, torch and the date.

Each part has its own time budget and its own ``try``: a failing part prints its error and the
suite goes on.  Default (CUDA): SD1.5 sizes in fp16 (``sd1-full``), 512 px, CFG 8 (batch 2), 20
euler steps; the whole suite stays under 4 minutes on an H100/H200.

    python benchmarks/gpu_suite.py                      # CUDA, writes benchmarks/results/gpu_suite_<gpu>.txt
    python benchmarks/gpu_suite.py --dry-run            # CPU, tiny weights: every code path in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, uninstalled
sys.path.insert(0, str(ROOT / "benchmarks"))

from comfy_notebook._session import Session  # noqa: E402
from comfy_notebook.demo import default_prompt  # noqa: E402
from comfy_notebook.engine.events import NodeFinished  # noqa: E402
from comfy_notebook.nodes import register_builtins  # noqa: E402
from comfy_notebook.testing import PRESETS, make_checkpoint  # noqa: E402

GOALS = {"e2e_its": 80.0, "sdxl_its": 23.0, "file_gbs": 20.0, "cold_s": 1.2, "vae_ms": 15.0,
         "clip_ms": 3.0, "overhead_pct": 1.0}


class Suite:
    """Shared state of one run: device, sizes, the checkpoint, figures, the report lines."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.tiny = args.tiny
        self.preset = "sd1-tiny" if args.tiny else "sd1-full"
        self.px = 64 if args.tiny else 512
        self.steps = 3 if args.tiny else 20
        self.dtype = torch.float16 if self.cuda else torch.float32
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
        self.ckpt = self.tmp / "models" / "checkpoints" / "suite.safetensors"
        self.fig: dict[str, float] = {}
        self.lines: list[str] = []
        self.deadline = time.perf_counter() + args.budget
        self.session: Session | None = None

    def out(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def timeit(self, fn: Callable[[], Any], *, budget: float, repeat: int = 5) -> float:
        """Median seconds per call (one warm-up call; fewer repeats when the budget runs out)."""
        end = time.perf_counter() + min(budget, max(self.left(), 1.0))
        fn()
        times = []
        while len(times) < repeat and (not times or time.perf_counter() < end):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    def new_session(self, out: str) -> Session:
        s = Session(models_dir=self.tmp / "models", output_dir=self.tmp / out)
        register_builtins(s)
        s.options["progress"] = False
        if not self.cuda:  # the session picks CUDA when present; a CPU dry run stays on the CPU
            from comfy_notebook.runtime import DevicePolicy, ModelManager

            s.services.models = ModelManager(DevicePolicy.cpu())
        return s

    def prompt(self, seed: int = 1, px: int | None = None) -> dict[str, Any]:
        api = default_prompt()
        api["4"]["inputs"]["ckpt_name"] = self.ckpt.name
        api["5"]["inputs"].update(width=px or self.px, height=px or self.px)
        api["3"]["inputs"].update(seed=seed, steps=self.steps)
        return api


def _ksampler_seconds(session: Session, api: dict[str, Any],
                      nodes: dict[str, float] | None = None) -> tuple[float, float]:
    """(seconds of the whole run_prompt, seconds of the KSampler node) for one prompt.

    ``nodes`` receives every node's seconds ("<id> <class>").
    """
    seconds: dict[str, float] = {}

    def on(event: Any) -> None:
        if isinstance(event, NodeFinished):
            seconds[event.node_id] = event.seconds
            if nodes is not None:
                nodes[f"{event.node_id} {event.class_type}"] = event.seconds

    unsubscribe = session.subscribe(on)
    t0 = time.perf_counter()
    try:
        session.run_prompt(api)
    finally:
        unsubscribe()
    return time.perf_counter() - t0, seconds.get("3", float("nan"))


def _unet_ref(session: Session) -> Any:
    name = next(i.name for i in session.models.list() if i.kind == "unet")
    return session.models[name].ref()


def _loaded(s: Suite, out: str) -> Session:
    """The suite's session with the checkpoint's models registered (runs the prompt once if not)."""
    if s.session is None:
        s.session = s.new_session(out)
    if not any(i.kind == "unet" for i in s.session.models.list()):
        s.session.run_prompt(s.prompt(seed=2))
    return s.session


# -- parts --------------------------------------------------------------------------------------
def part_checkpoint(s: Suite) -> None:
    if s.cuda:  # the CUDA context is not part of any figure below
        torch.zeros(1, device=s.device)
        torch.cuda.synchronize(s.device)
    t0 = time.perf_counter()
    make_checkpoint(s.ckpt, preset=s.preset, seed=0)
    size = s.ckpt.stat().st_size
    s.out(f"checkpoint      {s.preset}: {size / 1e9:.2f} GB written in {time.perf_counter() - t0:.1f} s "
          "(in the page cache now)")


def part_cold(s: Suite) -> None:
    session = s.new_session("out_cold")
    moves: list[str] = []
    session.models.subscribe(lambda e: moves.append(
        f"{e.name} {e.source}->{e.target} {e.nbytes / 1e9:.2f} GB {e.seconds * 1e3:.0f} ms ({e.reason})"))
    nodes: dict[str, float] = {}
    wall, ks = _ksampler_seconds(session, s.prompt(seed=1), nodes)
    s.session = session
    s.out("  cold nodes: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in nodes.items()))
    s.out("  cold moves: " + "; ".join(moves))
    s.fig["cold_s"] = wall
    s.out(f"cold start      new session, file in page cache -> first image: {wall:.2f} s (KSampler {ks:.2f} s incl. "
          f"capture)  goal <= {GOALS['cold_s']} s")


def part_e2e(s: Suite) -> None:
    session = _loaded(s, "out_e2e")
    rates = {}
    for graphs in (True, False):
        session.options["cuda_graphs"] = graphs
        best = float("inf")
        for i in range(2):
            _, ks = _ksampler_seconds(session, s.prompt(seed=10 + i + (0 if graphs else 100)))
            best = min(best, ks)
        rates[graphs] = s.steps / best
    session.options.pop("cuda_graphs", None)
    s.fig["e2e_its"] = rates[True]
    one = s.prompt(seed=40)
    one["3"]["inputs"]["steps"] = 1  # same shapes: a replayed step plus the node's fixed cost
    _, ks1 = _ksampler_seconds(session, one)
    extra = [f"1-step KSampler {ks1 * 1e3:.1f} ms (fixed cost ~{(ks1 - 1 / rates[True]) * 1e3:.1f} ms a run)"]
    # samplers with per-step noise, graphs on: the noise's cost per step in the run
    for name in ("euler_ancestral", "dpmpp_2m_sde_gpu"):
        api = s.prompt(seed=50)
        api["3"]["inputs"]["sampler_name"] = name
        _, ks = _ksampler_seconds(session, api)
        its = s.steps / ks
        extra.append(f"{name} {its:.1f} it/s ({100 * (1 / its - 1 / rates[True]) * rates[True]:+.1f} % per step "
                     "vs euler)")
    g = session.models.graphs
    held = ", ".join(f"{h.model} [{h.shapes}] {h.nbytes / 2**20:.0f} MiB" for h in g.held()) or "none"
    s.out(f"e2e run_prompt  KSampler {s.px}px cfg 8, {s.steps} euler steps: {rates[True]:.1f} it/s with "
          f"graphs, {rates[False]:.1f} it/s eager (x{rates[True] / rates[False]:.2f}); graphs held: {held}; "
          f"fallbacks {g.fallbacks}")
    s.out("e2e samplers    " + ", ".join(extra) + "  goal: noise <= 5 % of a step")


def _unet_inputs(s: Suite, ctx_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hw = s.px // 8
    x = torch.randn(2, 4, hw, hw, device=s.device, dtype=s.dtype)
    ctx = torch.randn(2, 77, ctx_dim, device=s.device, dtype=s.dtype)
    ts = torch.linspace(999, 0, s.steps, device=s.device)
    return x, ctx, ts


def part_captured_step(s: Suite) -> None:
    session = _loaded(s, "out_step")
    mgr = session.models
    ref = _unet_ref(session)
    with torch.no_grad(), mgr.use(ref) as unet:
        x, ctx, ts = _unet_inputs(s, unet.config.context_dim)
        graphed = mgr.graphs.wrap(ref, unet, unet, enabled=True)

        def loop(fn: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                out = x
                for t in ts:
                    out = fn(x, t.expand(2), ctx)
                return out
            return run

        eager_s = s.timeit(loop(unet), budget=20)
        first = graphed(x, ts[:1].expand(2), ctx)
        second = graphed(x, ts[:1].expand(2), ctx)
        replay = graphed(x, ts[:1].expand(2), ctx)
        eager = unet(x, ts[:1].expand(2), ctx)
        graph_s = s.timeit(loop(graphed), budget=20)
    s.fig["ours_eager_its"], s.fig["ours_graph_its"] = s.steps / eager_s, s.steps / graph_s
    same = torch.equal(replay, eager) and torch.equal(first, eager) and torch.equal(second, eager)
    s.out(f"our UNet step   eager {s.fig['ours_eager_its']:.1f} it/s, captured {s.fig['ours_graph_its']:.1f} it/s "
          f"(x{eager_s / graph_s:.2f}); replay bit-identical to eager: {same} "
          f"(captures {mgr.graphs.captures}, fallbacks {mgr.graphs.fallbacks})")


def part_first_call(s: Suite) -> None:
    """First-call latency of a UNet forward at a new shape, per SDPA backend order.

    A cold start pays for every kernel's first use (cuDNN attention builds a plan per shape);
    fresh latent sizes per backend order show what that costs, and the steady state after.
    """
    if not s.cuda:
        s.out("first call      skipped: CUDA only (SDPA backend order)")
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    session = _loaded(s, "out_first")
    mgr = session.models
    ref = _unet_ref(session)
    orders = {"default": None,
              "flash first": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                              SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]}
    parts = []
    with torch.no_grad(), mgr.use(ref) as unet:
        for (label, order), hw in zip(orders.items(), (72, 80), strict=True):
            x = torch.randn(2, 4, hw, hw, device=s.device, dtype=s.dtype)
            ctx = torch.randn(2, 77, unet.config.context_dim, device=s.device, dtype=s.dtype)
            t = torch.full((2,), 500.0, device=s.device)
            scope = contextlib.nullcontext() if order is None else sdpa_kernel(order, set_priority=True)
            with scope:
                s.sync()
                t0 = time.perf_counter()
                unet(x, t, ctx)
                s.sync()
                first = time.perf_counter() - t0
                steady = s.timeit(lambda x=x, ctx=ctx, t=t: unet(x, t, ctx), budget=3)
            parts.append(f"{label} ({hw * 8}px): first {first * 1e3:.0f} ms, then {steady * 1e3:.1f} ms")
    s.out("first call      UNet forward at a new shape: " + "; ".join(parts))


def part_diffusers(s: Suite) -> None:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        s.out("diffusers       skipped: diffusers is not importable here (carry its wheel in .whl/)")
        return
    from models_speed import _diffusers_unet

    from comfy_notebook.families import load_checkpoint

    unet = load_checkpoint(s.ckpt, parts=("unet",), dtype=s.dtype).unet
    assert unet is not None
    cfg = unet.config
    ref = _diffusers_unet(cfg, unet.state_dict(), s.dtype, s.device)  # identical weights
    del unet
    x, ctx, ts = _unet_inputs(s, cfg.context_dim)
    with torch.no_grad():
        def eager() -> None:
            for t in ts:
                ref(x, t.expand(2), ctx)

        eager_s = s.timeit(eager, budget=25)
        s.fig["diffusers_its"] = s.steps / eager_s
        if not s.cuda:
            s.out(f"diffusers UNet  eager {s.fig['diffusers_its']:.1f} it/s; CUDA-graph limit: needs CUDA")
            return
        st_x, st_t, st_c = x.clone(), ts[:1].expand(2).clone(), ctx.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            ref(st_x, st_t, st_c)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            ref(st_x, st_t, st_c)

        def replay() -> None:
            for t in ts:
                st_t.copy_(t.expand(2))
                graph.replay()

        limit_s = s.timeit(replay, budget=20)
    s.fig["limit_its"] = s.steps / limit_s
    s.out(f"diffusers UNet  eager {s.fig['diffusers_its']:.1f} it/s; step replayed as a CUDA graph (the limit) "
          f"{s.fig['limit_its']:.1f} it/s")
    graph.reset()


def part_file_to_gpu(s: Suite) -> None:
    from comfy_notebook.families import load_checkpoint
    from comfy_notebook.runtime import fastread
    from comfy_notebook.runtime.loading import SafetensorsFile

    sf = SafetensorsFile(s.ckpt)
    keys = [k for k in sf if k.startswith("model.diffusion_model.")]
    wanted = {k: (k, s.dtype, sf.entry(k)[1]) for k in keys}
    nbytes = sum(sf.entry(k)[3] * sf.entry(k)[0].itemsize for k in keys)

    def fast() -> None:
        fastread.read_spans(s.ckpt, fastread.spans_for(sf, wanted), s.device)

    def plain() -> None:
        plain_sf = SafetensorsFile(s.ckpt)  # a fresh mapping: pages faulted in again, as a cold load
        for k in keys:
            plain_sf[k].to(device=s.device, dtype=s.dtype)

    t_fast = s.timeit(fast, budget=15, repeat=3)
    t_plain = s.timeit(plain, budget=20, repeat=3)
    t_load = s.timeit(lambda: load_checkpoint(s.ckpt, parts=("unet",), dtype=s.dtype, device=s.device),
                      budget=15, repeat=3)
    sweep = []  # reader threads x chunk size, to tune the defaults from one run
    for threads, chunk in ((2, 64), (4, 64), (16, 64), (8, 16), (8, 256)):
        if s.left() < 30:
            break
        t = s.timeit(lambda th=threads, ch=chunk: fastread.read_spans(
            s.ckpt, fastread.spans_for(sf, wanted), s.device, threads=th, chunk_bytes=ch << 20),
            budget=4, repeat=2)
        sweep.append(f"{threads}t/{chunk}MB {nbytes / t / 1e9:.1f}")
    s.fig["file_gbs"] = nbytes / t_fast / 1e9
    s.out(f"file -> {s.device.type:4s}    UNet {nbytes / 1e9:.2f} GB: fastread {s.fig['file_gbs']:.1f} GB/s, "
          f"plain mmap .to() {nbytes / t_plain / 1e9:.1f} GB/s (x{t_plain / t_fast:.1f}); load_checkpoint(unet) "
          f"{t_load * 1e3:.0f} ms  goal >= {GOALS['file_gbs']} GB/s")
    s.out(f"  fastread GB/s by threads/chunk (default {min(8, os.cpu_count() or 1)}t/64MB): {', '.join(sweep)}")


def part_offload(s: Suite) -> None:
    session = _loaded(s, "out_offload")
    mgr = session.models
    ref = _unet_ref(session)
    m = ref.base

    def cycle() -> None:
        mgr.offload(m)
        s.sync()
        mgr.load(m)

    t = s.timeit(cycle, budget=10)
    s.fig["offload_gbs"] = m.nbytes / t / 1e9
    s.out(f"offload -> dev  {m.nbytes / 1e9:.2f} GB pinned={m.pinned}: {s.fig['offload_gbs']:.1f} GB/s")


def part_vae_clip(s: Suite) -> None:
    session = _loaded(s, "out_vae")
    mgr = session.models
    vae_ref = next(mgr[i.name].ref() for i in mgr.list() if i.kind == "vae")
    clip_ref = next(mgr[i.name].ref() for i in mgr.list() if i.kind == "clip")
    hw = s.px // 8
    z = torch.randn(1, 4, hw, hw, device=s.device)
    with torch.no_grad(), mgr.use(vae_ref) as vae:
        dtype = next(vae.parameters()).dtype
        t_vae = s.timeit(lambda: vae.decode(z), budget=10)
        peer = ""
        try:
            from models_speed import _diffusers_vae

            dv = _diffusers_vae(vae.config, vae.state_dict(), dtype, s.device)
            t_peer = s.timeit(lambda: dv.decode(z.to(dtype)).sample, budget=10)
            peer = f", diffusers {t_peer * 1e3:.1f} ms (x{t_peer / t_vae:.2f})"
        except ImportError:
            peer = ", diffusers not importable"
        # variants for the next step (not the product path yet): channels-last input, and a
        # channels-last copy of the weights as well
        z_cl = z.to(memory_format=torch.channels_last)
        t_in_cl = s.timeit(lambda: vae.decode(z_cl), budget=5)
        vae_cl = copy.deepcopy(vae).to(memory_format=torch.channels_last)
        t_all_cl = s.timeit(lambda: vae_cl.decode(z_cl), budget=5)
    s.fig["vae_ms"] = t_vae * 1e3
    s.out(f"VAE decode      {s.px}px {str(dtype).removeprefix('torch.')}: {s.fig['vae_ms']:.1f} ms{peer}  "
          f"goal <= {GOALS['vae_ms']} ms")
    s.out(f"  VAE variants: channels-last input {t_in_cl * 1e3:.1f} ms, channels-last input and weights "
          f"{t_all_cl * 1e3:.1f} ms")
    tokens = torch.randint(0, 49406, (2, 77), device=s.device)
    with torch.no_grad(), mgr.use(clip_ref) as clip:
        t_clip = s.timeit(lambda: clip(tokens), budget=10, repeat=11)
        graphed = mgr.graphs.wrap(clip_ref, clip, lambda tok: clip(tok)[0], enabled=True)
        t_graph = s.timeit(lambda: graphed(tokens), budget=10, repeat=11)
    s.fig["clip_ms"] = t_clip * 1e3
    s.out(f"CLIP encode     batch 2 x 77 tokens: {s.fig['clip_ms']:.2f} ms eager, {t_graph * 1e3:.2f} ms "
          f"captured (runtime.graphs; not wired into CLIPTextEncode yet)  goal <= {GOALS['clip_ms']} ms")


def part_sampler_overhead(s: Suite) -> None:
    import sampling_overhead as so

    from comfy_notebook.families.sd1 import SD15_LATENT
    from comfy_notebook.sampling import DiscreteSchedule
    from comfy_notebook.sampling.model_sampling import ModelSampling

    hw = s.px // 8
    x = {"samples": torch.zeros(1, 4, hw, hw)}
    ctx = torch.zeros(1, 77, 768)
    kw = dict(model_sampling=ModelSampling(DiscreteSchedule()), latent_format=SD15_LATENT, latent=x,
              positive=[[ctx, {}]],
              negative=[[ctx, {}]], seed=0, cfg=8.0, scheduler="normal", device=s.device)
    # % of the GPU step at the limit (measured above, else performance.md's 12.3 ms replay step)
    step_ms = 1e3 / s.fig["limit_its"] if "limit_its" in s.fig else 12.3
    parts = []
    for name in ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde_gpu"):
        us, _ = so._time({**kw, "sampler_name": name}, s.steps, s.device, 3)
        parts.append(f"{name} {us:.0f} us ({us / 10 / step_ms:.1f} %)")
    s.out(f"sampler work    per step outside the model (stub model; % of a {step_ms:.1f} ms step): "
          + ", ".join(parts) + f"  goal <= {GOALS['overhead_pct']} %")


def part_attention(s: Suite) -> None:
    from comfy_notebook.runtime.devices import attention_backend

    s.out(f"attention       SDPA backend for {str(s.dtype).removeprefix('torch.')} heads of 64 on {s.device}: "
          f"{attention_backend(s.device, s.dtype)}")


def part_sdxl(s: Suite) -> None:
    preset = "sdxl" if s.tiny else "sdxl-full"  # "sdxl" is the tiny SDXL-shaped preset
    if preset not in PRESETS:
        s.out(f"SDXL            skipped: comfy_notebook.testing has no {preset} preset on this tree")
        return
    path = s.tmp / "models" / "checkpoints" / "sdxl.safetensors"
    t0 = time.perf_counter()
    make_checkpoint(path, preset=preset, seed=0)
    made = time.perf_counter() - t0
    session = s.new_session("out_sdxl")
    api = s.prompt(seed=3, px=128 if s.tiny else 1024)
    api["4"]["inputs"]["ckpt_name"] = path.name
    cold, _ = _ksampler_seconds(session, api)
    rates = {}
    for graphs in (True, False):
        session.options["cuda_graphs"] = graphs
        api["3"]["inputs"]["seed"] = 4 if graphs else 5
        _, ks = _ksampler_seconds(session, api)
        rates[graphs] = s.steps / ks
    s.fig["sdxl_its"] = rates[True]
    held = ", ".join(f"[{h.shapes}] {h.nbytes / 2**20:.0f} MiB" for h in session.models.graphs.held()) or "none"
    s.out(f"SDXL            {preset} {path.stat().st_size / 1e9:.1f} GB (made in {made:.0f} s), "
          f"{api['5']['inputs']['width']}px e2e: {rates[True]:.1f} it/s with graphs, {rates[False]:.1f} eager; "
          f"first image {cold:.1f} s; graphs {held}  goal >= {GOALS['sdxl_its']}")


PARTS: list[tuple[str, Callable[[Suite], None], float]] = [  # name, function, seconds it needs
    ("checkpoint", part_checkpoint, 25), ("cold", part_cold, 20), ("e2e", part_e2e, 20),
    ("captured_step", part_captured_step, 20), ("first_call", part_first_call, 8),
    ("diffusers", part_diffusers, 40),
    ("file_to_gpu", part_file_to_gpu, 20), ("offload", part_offload, 8), ("vae_clip", part_vae_clip, 20),
    ("sampler_overhead", part_sampler_overhead, 10), ("attention", part_attention, 2),
    ("sdxl", part_sdxl, 60),
]


def _header(s: Suite) -> str:
    if s.cuda:
        name = torch.cuda.get_device_name(s.device)
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            driver = "?"
        dev = f"{name}, driver {driver}, CUDA {torch.version.cuda}"
    else:
        dev = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
    return (f"gpu_suite {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  device: {dev}  torch "
            f"{torch.__version__}  python {platform.python_version()}  preset {s.preset}, {s.px}px, "
            f"{s.steps} steps, {str(s.dtype).removeprefix('torch.')}")


def _summary(s: Suite) -> None:
    f = s.fig
    limit = f.get("limit_its")
    if "e2e_its" in f:
        vs = f" = {f['e2e_its'] / limit:.2f} of the limit {limit:.1f}" if limit else ""
        peer = f", x{f['e2e_its'] / f['diffusers_its']:.2f} diffusers eager" if "diffusers_its" in f else ""
        s.out(f"SUMMARY e2e {f['e2e_its']:.1f} it/s{vs}{peer} (goal >= {GOALS['e2e_its']})")
    if "ours_graph_its" in f and limit:
        s.out(f"SUMMARY our captured step {f['ours_graph_its']:.1f} it/s = {f['ours_graph_its'] / limit:.2f} of the limit")
    for key, unit, better in (("file_gbs", "GB/s", ">="), ("cold_s", "s", "<="), ("vae_ms", "ms", "<="),
                              ("clip_ms", "ms", "<="), ("sdxl_its", "it/s", ">=")):
        if key in f:
            ok = f[key] >= GOALS[key] if better == ">=" else f[key] <= GOALS[key]
            s.out(f"SUMMARY {key} {f[key]:.2f} {unit} (goal {better} {GOALS[key]}): {'met' if ok else 'NOT met'}")


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny weights, 64 px, 3 steps")
    ap.add_argument("--dry-run", action="store_true", help="--device cpu --tiny: run every code path fast")
    ap.add_argument("--budget", type=float, default=220.0, help="seconds for the whole suite")
    ap.add_argument("--only", default=None, help="comma-separated part names")
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results/gpu_suite_<device>.txt)")
    args = ap.parse_args()
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    s = Suite(args)
    s.out(_header(s))
    only = set(args.only.split(",")) if args.only else None
    failed = 0
    for name, fn, need in PARTS:
        if only is not None and name not in only and name != "checkpoint":
            continue
        if s.left() < need * (0.2 if s.tiny else 1.0):
            s.out(f"{name:15s} skipped: {s.left():.0f} s left of the suite's budget, it needs ~{need:.0f} s")
            continue
        t0 = time.perf_counter()
        try:
            with _quiet_warnings():
                fn(s)
        except Exception as exc:  # one part failing must not lose the others' figures
            failed += 1
            s.out(f"{name:15s} FAILED {type(exc).__name__}: {exc}")
            traceback.print_exc()
        print(f"  ({name}: {time.perf_counter() - t0:.1f} s)", flush=True)
    _summary(s)
    dev = "cpu-dry-run" if not s.cuda else re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name(s.device))
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"gpu_suite_{dev}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(s.lines) + "\n")
    print(f"wrote {out} ({failed} part(s) failed)")
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / out.name).write_text("\n".join(s.lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
