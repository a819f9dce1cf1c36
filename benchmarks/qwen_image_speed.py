"""Speed of our Qwen-Image transformer (bf16, fp8 cast, fp8 matmul) against diffusers' on identical weights.

GPU: Qwen-Image sizes (20.4 B parameters, 60 dual-stream blocks), a 1024x1024 image (128x128
latent, 4096 image tokens) with 128 text tokens (a typical prompt through Qwen2.5-VL's chat
template), batch 1, 20 steps; the Edit variant adds one 1024x1024 reference latent (8192 image
tokens).  Weights are random (drawn on the GPU, N(0, 1/fan_in)); diffusers loads the released
keys unchanged (its single-file mapping for this model is the identity), so both models share
the same tensors.  CPU: a small Qwen-Image (hidden 256) at 256 px, as a smoke run.  Prints
seconds per step and ratios (diffusers / ours, so > 1 means we are faster), and the max
|difference| of one step.

Run: ``python benchmarks/qwen_image_speed.py [--device cpu|cuda] [--steps N]`` (also
``python benchmarks/models_speed.py --models qwen_image``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from comfy_notebook.models.qwen_image import QwenImage, QwenImageConfig
from comfy_notebook.runtime.fp8 import CastLinear, FP8MatmulLinear, fp8_matmul_supported


def _random_weights(model: nn.Module, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """N(0, 1/fan_in) matrices, 1 + N(0, 0.01) RMS-norm gains, N(0, 0.01) vectors, drawn on ``device``."""
    gen = torch.Generator(device=device).manual_seed(0)
    out = {}
    for k, like in model.state_dict().items():
        t = torch.randn(like.shape, generator=gen, device=device, dtype=torch.float32)
        if like.dim() >= 2:
            t *= like[0].numel() ** -0.5
        elif "norm" in k.rsplit(".", 2)[-2]:
            t = 1 + 0.1 * t
        else:
            t *= 0.1
        out[k] = t.to(dtype)
    return out


def _build(cfg: QwenImageConfig, sd: dict[str, torch.Tensor], linear=nn.Linear) -> QwenImage:
    with torch.device("meta"):
        m = QwenImage(cfg, linear=linear)
    m.load_state_dict(sd, assign=True)
    return m.eval().requires_grad_(False)


def _diffusers(cfg: QwenImageConfig, sd: dict[str, torch.Tensor]) -> nn.Module:
    from diffusers import QwenImageTransformer2DModel

    with torch.device("meta"):
        ref = QwenImageTransformer2DModel(
            patch_size=cfg.patch_size, in_channels=cfg.patch_features, out_channels=cfg.out_channels,
            num_layers=cfg.num_layers, attention_head_dim=cfg.head_dim, num_attention_heads=cfg.num_heads,
            joint_attention_dim=cfg.context_dim, axes_dims_rope=cfg.axes_dim)
    ref.load_state_dict(dict(sd), assign=True)
    # its RoPE tables are plain tensors made in __init__ (meta above): make them for real
    ref.pos_embed = type(ref.pos_embed)(theta=cfg.theta, axes_dim=list(cfg.axes_dim), scale_rope=True)
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


def _pack(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(t: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    return t.view(t.shape[0], h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(t.shape[0], c, h, w)


def run(device: torch.device, steps: int = 20) -> None:
    gpu = device.type == "cuda"
    if gpu:
        cfg, px, txt, dtype = QwenImageConfig.qwen_image(), 1024, 128, torch.bfloat16
    else:
        cfg = dataclasses.replace(QwenImageConfig.qwen_image(), num_layers=2, num_heads=2, context_dim=256)
        px, txt, dtype, steps = 256, 32, torch.float32, min(steps, 3)
    h = w = px // 8
    c = cfg.out_channels
    print(f"qwen-image device={device} ({torch.cuda.get_device_name() if gpu else 'cpu'}) torch={torch.__version__} "
          f"hidden={cfg.hidden_size} blocks={cfg.num_layers} {px}px txt={txt} batch 1 {steps} steps {dtype}")
    with torch.inference_mode():
        with torch.device("meta"):
            shape_model = QwenImage(cfg)
        sd = _random_weights(shape_model, device, dtype)
        ours = _build(cfg, sd)
        ref = _diffusers(cfg, sd)
        gen = torch.Generator(device=device).manual_seed(1)
        x = torch.randn(1, c, h, w, generator=gen, device=device, dtype=dtype)
        refl = torch.randn(1, c, h, w, generator=gen, device=device, dtype=dtype)
        ctx = torch.randn(1, txt, cfg.context_dim, generator=gen, device=device, dtype=dtype)
        ts = torch.linspace(1.0, 0.05, steps + 1, device=device)
        packed, packed_edit = _pack(x), torch.cat([_pack(x), _pack(refl)], dim=1)
        shapes = [[(1, h // 2, w // 2)]]

        bf16_step: dict[str, float] = {}
        for name, refs in (("t2i", None), ("edit", [refl])):
            def step_ours(model, refs=refs):
                return lambda i: model(x, ts[i:i + 1], ctx, ref_latents=refs)

            def step_ref(i, refs=refs):
                tokens = packed if refs is None else packed_edit
                img_shapes = shapes if refs is None else [shapes[0] * 2]
                return ref(hidden_states=tokens, encoder_hidden_states=ctx, timestep=ts[i:i + 1],
                           img_shapes=img_shapes, return_dict=False)[0]

            a = step_ours(ours)(0).float()
            b = _unpack(step_ref(0)[:, : (h // 2) * (w // 2)].float(), c, h, w)
            t_ours, t_ref = _time(step_ours(ours), steps, device), _time(step_ref, steps, device)
            bf16_step[name] = t_ours
            print(f"qwen-image {name:4s} {str(dtype)[6:]} ours {t_ours:8.4f} s/step  diffusers {t_ref:8.4f} s/step  "
                  f"ratio {t_ref / t_ours:.3f}  max|d|={(a - b).abs().max().item():.2e} "
                  f"rel L2 {((a - b).norm() / b.norm()).item():.2e}")
        ref = None  # drop diffusers (its tensors alias ours)
        if gpu:
            torch.cuda.empty_cache()
        a = ours(x, ts[:1], ctx).float()
        t_ours = bf16_step["t2i"]
        del ours
        fp8_sd = {k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}
        del sd
        if gpu:
            torch.cuda.empty_cache()
        variants = [("fp8 cast", CastLinear)]
        if fp8_matmul_supported(device):
            variants.append(("fp8 matmul (fp8_e4m3fn_fast)", FP8MatmulLinear))
        for name, linear in variants:
            m = _build(cfg, fp8_sd, linear)
            got = m(x, ts[:1], ctx).float()
            rel = ((got - a).norm() / a.norm()).item()
            t = _time(lambda i, m=m: m(x, ts[i:i + 1], ctx), steps, device)
            mem = sum(p.numel() * p.element_size() for p in m.parameters()) / 2**30
            print(f"qwen-image {name:28s} {t:8.4f} s/step  vs {str(dtype)[6:]} ours ratio {t_ours / t:.3f}  "
                  f"weights {mem:.1f} GiB  rel L2 vs {str(dtype)[6:]} {rel:.3f}")
            del m
        if gpu:
            print(f"qwen-image peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    run(torch.device(args.device), args.steps)


if __name__ == "__main__":
    main()
