"""Speed of our Flux transformer (bf16, fp8 cast, fp8 matmul) against diffusers' on identical weights.

GPU: Flux.1-dev sizes (11.9 B parameters), a 1024x1024 image (128x128 latent, 4096 image
tokens) with 256 T5 tokens (ComfyUI's padding), batch 1, 20 steps; weights are random (drawn on
the GPU, N(0, 1/fan_in)), converted for diffusers with its own single-file converter.  CPU: a
small Flux (hidden 256) at 256 px, as a smoke run.  Prints seconds per step and ratios
(diffusers / ours, so > 1 means we are faster), and the max |difference| of one step.

Run: ``python benchmarks/flux_speed.py [--device cpu|cuda] [--steps N]`` (also
``python benchmarks/models_speed.py --only flux``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from comfy_notebook.models.flux import Flux, FluxConfig
from comfy_notebook.runtime.fp8 import CastLinear, FP8MatmulLinear, fp8_matmul_supported


def _random_weights(model: nn.Module, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """N(0, 1/fan_in) matrices, 1 + N(0, 0.01) norm scales, N(0, 0.01) vectors, drawn on ``device``."""
    gen = torch.Generator(device=device).manual_seed(0)
    out = {}
    for k, like in model.state_dict().items():
        t = torch.randn(like.shape, generator=gen, device=device, dtype=torch.float32)
        if like.dim() >= 2:
            t *= like[0].numel() ** -0.5
        elif k.endswith(".scale"):
            t = 1 + 0.1 * t
        else:
            t *= 0.1
        out[k] = t.to(dtype)
    return out


def _build(cfg: FluxConfig, sd: dict[str, torch.Tensor], linear=nn.Linear) -> Flux:
    with torch.device("meta"):
        m = Flux(cfg, linear=linear)
    m.load_state_dict(sd, assign=True)
    return m.eval().requires_grad_(False)


def _diffusers(cfg: FluxConfig, sd: dict[str, torch.Tensor]) -> nn.Module:
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders import single_file_utils as sfu

    src = inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers)
    ns = dict(vars(sfu))
    exec(src.replace("inner_dim = 3072", f"inner_dim = {cfg.hidden_size}"), ns)
    conv = ns["convert_flux_transformer_checkpoint_to_diffusers"](dict(sd))
    with torch.device("meta"):
        ref = FluxTransformer2DModel(
            in_channels=cfg.in_channels * 4, num_layers=cfg.depth, num_single_layers=cfg.depth_single_blocks,
            attention_head_dim=cfg.hidden_size // cfg.num_heads, num_attention_heads=cfg.num_heads,
            joint_attention_dim=cfg.context_in_dim, pooled_projection_dim=cfg.vec_in_dim,
            guidance_embeds=cfg.guidance_embed, axes_dims_rope=cfg.axes_dim)
    ref.load_state_dict(conv, assign=True)
    return ref.eval().requires_grad_(False)


def _time(fn, steps: int, device: torch.device) -> float:
    """Seconds per step of ``fn(step)`` over ``steps`` steps, after one warm-up step."""
    fn(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        fn(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def run(device: torch.device, steps: int = 20) -> None:
    gpu = device.type == "cuda"
    if gpu:
        cfg, px, txt, dtype = FluxConfig.dev(), 1024, 256, torch.bfloat16
    else:
        cfg = dataclasses.replace(FluxConfig.dev(), hidden_size=256, num_heads=2, depth=2, depth_single_blocks=4,
                                  context_in_dim=256, vec_in_dim=64)
        px, txt, dtype, steps = 256, 64, torch.float32, min(steps, 3)
    h = w = px // 8
    print(f"flux   device={device} ({torch.cuda.get_device_name() if gpu else 'cpu'}) torch={torch.__version__} "
          f"hidden={cfg.hidden_size} blocks={cfg.depth}+{cfg.depth_single_blocks} {px}px txt={txt} batch 1 "
          f"{steps} steps {dtype}")
    with torch.inference_mode():
        with torch.device("meta"):
            shape_model = Flux(cfg)
        sd = _random_weights(shape_model, device, dtype)
        ours = _build(cfg, sd)
        ref = _diffusers(cfg, sd)
        gen = torch.Generator(device=device).manual_seed(1)
        x = torch.randn(1, 16, h, w, generator=gen, device=device, dtype=dtype)
        ctx = torch.randn(1, txt, cfg.context_in_dim, generator=gen, device=device, dtype=dtype)
        y = torch.randn(1, cfg.vec_in_dim, generator=gen, device=device, dtype=dtype)
        g = torch.full((1,), 3.5, device=device)
        ts = torch.linspace(1.0, 0.05, steps + 1, device=device)
        packed = x.view(1, 16, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, -1, 64)
        img_ids = torch.zeros(h // 2, w // 2, 3, device=device)
        img_ids[..., 1] = torch.arange(h // 2, device=device)[:, None]
        img_ids[..., 2] = torch.arange(w // 2, device=device)[None, :]
        img_ids = img_ids.view(-1, 3)
        txt_ids = torch.zeros(txt, 3, device=device)

        def step_ours(model):
            return lambda i: model(x, ts[i:i + 1], ctx, y, g)

        def step_ref(i):
            return ref(hidden_states=packed, encoder_hidden_states=ctx, pooled_projections=y, timestep=ts[i:i + 1],
                       img_ids=img_ids, txt_ids=txt_ids, guidance=g, return_dict=False)[0]

        a = step_ours(ours)(0).float()
        b = step_ref(0).float().view(1, h // 2, w // 2, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, h, w)
        t_ours, t_ref = _time(step_ours(ours), steps, device), _time(step_ref, steps, device)
        print(f"flux   {str(dtype)[6:]} ours {t_ours:8.4f} s/step  diffusers {t_ref:8.4f} s/step  ratio {t_ref / t_ours:.3f}  "
              f"max|d|={(a - b).abs().max().item():.2e} rel L2 {((a - b).norm() / b.norm()).item():.2e} "
              f"(|out| mean {a.abs().mean().item():.2e})")
        if gpu:  # which side is nearer the float32 result of the same weights?
            f32 = _build(cfg, {k: v.float() for k, v in sd.items()})
            exact = f32(x.float(), ts[:1], ctx.float(), y.float(), g).float()
            del f32
            torch.cuda.empty_cache()
            print(f"flux   rel L2 vs float32: ours {((a - exact).norm() / exact.norm()).item():.2e}  "
                  f"diffusers {((b - exact).norm() / exact.norm()).item():.2e}")
        ref = None  # drop diffusers (its tensors mostly alias ours)
        if gpu:
            torch.cuda.empty_cache()
        fp8_sd = {k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}
        variants = [("fp8 cast", CastLinear)]
        if fp8_matmul_supported(device):
            variants.append(("fp8 matmul (fp8_e4m3fn_fast)", FP8MatmulLinear))
        for name, linear in variants:
            m = _build(cfg, fp8_sd, linear)
            c = step_ours(m)(0).float()
            rel = ((c - a).norm() / a.norm()).item()
            t = _time(step_ours(m), steps, device)
            mem = sum(p.numel() * p.element_size() for p in m.parameters()) / 2**30
            print(f"flux   {name:28s} {t:8.4f} s/step  vs {str(dtype)[6:]} ours ratio {t_ours / t:.3f}  "
                  f"weights {mem:.1f} GiB  rel L2 vs {str(dtype)[6:]} {rel:.3f}")
            del m
        if gpu:
            print(f"flux   peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    run(torch.device(args.device), args.steps)


if __name__ == "__main__":
    main()
