"""Speed of our Z-Image transformer and Qwen3-4B text encoder against diffusers / transformers.

GPU: Z-Image-Turbo sizes (6.15 B parameters) at 1024x1024 (128x128 latent, 4096 image tokens)
with the caption of ComfyUI's Z-Image-Turbo example prompt (its chat-templated Qwen tokens,
padded to a multiple of 32 inside both models), batch 1 (the Turbo workflows run at cfg 1),
8 steps, bf16; then the same weights stored fp8 (cast-on-forward, and fp8 matmul where the GPU
has it).  The text encoder: Qwen3-4B bf16 on the same prompt, ours (stops after layer -2, as
ComfyUI reads it) against transformers' ``Qwen3Model`` (``hidden_states[-2]``).  Weights are
random (drawn on the device, N(0, 1/fan_in)) and identical for both sides (diffusers gets them
through its own single-file converter).  CPU: small sizes as a smoke run.  Prints seconds per
step (per encode) and ratios (peer / ours, so > 1 means we are faster), and max |difference|.

Run: ``python benchmarks/zimage_speed.py [--device cpu|cuda] [--steps N]`` (also
``python benchmarks/models_speed.py --models zimage``).
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

from comfy_notebook.models.qwen3 import Qwen3Config, Qwen3Encoder
from comfy_notebook.models.zimage import ZImage, ZImageConfig
from comfy_notebook.runtime.fp8 import CastLinear, FP8MatmulLinear, fp8_matmul_supported

PROMPT = ("cute anime style girl with massive fluffy fennec ears and a big fluffy tail blonde messy long hair "
          "blue eyes wearing a maid outfit with a long black gold leaf pattern dress and a white apron, it is "
          "a postcard held by a hand in front of a beautiful realistic city at sunset and there is cursive "
          "writing that says \"ZImage, Now in ComfyUI\"")
TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def _random_weights(model: nn.Module, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """N(0, 1/fan_in) matrices, 1 + N(0, 0.01) norm weights, N(0, 0.01) vectors, drawn on ``device``."""
    gen = torch.Generator(device=device).manual_seed(0)
    out = {}
    for k, like in model.state_dict().items():
        t = torch.randn(like.shape, generator=gen, device=device, dtype=torch.float32)
        if like.dim() >= 2:
            t *= like[0].numel() ** -0.5
        elif "norm" in k:
            t = 1 + 0.1 * t
        else:
            t *= 0.1
        out[k] = t.to(dtype)
    return out


def _build(cls, cfg, sd: dict[str, torch.Tensor], linear=nn.Linear) -> nn.Module:
    with torch.device("meta"):
        m = cls(cfg, linear=linear)
    m.load_state_dict(sd, assign=True)
    return m.eval().requires_grad_(False)


def _diffusers(cfg: ZImageConfig, sd: dict[str, torch.Tensor]) -> nn.Module:
    from diffusers import ZImageTransformer2DModel
    from diffusers.loaders.single_file_utils import (
        convert_z_image_transformer_checkpoint_to_diffusers,
    )

    conv = convert_z_image_transformer_checkpoint_to_diffusers(dict(sd))
    with torch.device("meta"):
        ref = ZImageTransformer2DModel(
            in_channels=cfg.in_channels, dim=cfg.dim, n_layers=cfg.n_layers, n_refiner_layers=cfg.n_refiner_layers,
            n_heads=cfg.n_heads, n_kv_heads=cfg.n_heads, cap_feat_dim=cfg.cap_feat_dim, axes_dims=list(cfg.axes_dims))
    ref.load_state_dict(conv, assign=True)
    return ref.eval().requires_grad_(False)


def _time(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of ``fn(i)`` over ``steps`` calls, after one warm-up call."""
    fn(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        fn(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def _prompt_ids(vocab: int, device: torch.device) -> torch.Tensor:
    from comfy_notebook.models.qwen_tokenizer import get_qwen_tokenizer

    ids = get_qwen_tokenizer().encode(TEMPLATE.format(PROMPT))
    return torch.tensor([ids], device=device) % vocab


def run_text_encoder(device: torch.device, repeat: int = 10) -> None:
    from transformers import Qwen3Config as HFConfig
    from transformers import Qwen3Model

    gpu = device.type == "cuda"
    cfg = Qwen3Config.qwen3_4b() if gpu else dataclasses.replace(Qwen3Config.tiny(), hidden_size=256, num_layers=4)
    dtype = torch.bfloat16 if gpu else torch.float32
    ids = _prompt_ids(cfg.vocab_size, device)
    with torch.inference_mode():
        with torch.device("meta"):
            shape_model = Qwen3Encoder(cfg)
        sd = _random_weights(shape_model, device, dtype)
        ours = _build(Qwen3Encoder, cfg, sd)
        with torch.device(device):  # built in place (its rotary buffers), weights then assigned
            ref = Qwen3Model(HFConfig(
                vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                intermediate_size=cfg.intermediate_size, rms_norm_eps=cfg.rms_eps, rope_theta=cfg.rope_theta,
                attn_implementation="sdpa"))
        ref.load_state_dict({k.removeprefix("model."): v for k, v in sd.items()}, assign=True)
        ref = ref.eval().requires_grad_(False)

        def mine(_: int) -> torch.Tensor:
            return ours(ids, layer=-2)

        def peer(_: int) -> torch.Tensor:
            return ref(input_ids=ids, output_hidden_states=True).hidden_states[-2]

        diff = (mine(0).float() - peer(0).float()).abs().max().item()
        t_ours, t_ref = _time(mine, repeat, device), _time(peer, repeat, device)
        print(f"qwen3  {cfg.num_layers} layers x {cfg.hidden_size} {str(dtype)[6:]} {ids.shape[1]} tokens: ours "
              f"{t_ours * 1e3:8.2f} ms  transformers {t_ref * 1e3:8.2f} ms  ratio {t_ref / t_ours:.3f}  "
              f"max|d|={diff:.2e}")


def run(device: torch.device, steps: int = 8) -> None:
    gpu = device.type == "cuda"
    if gpu:
        cfg, px, dtype = ZImageConfig.turbo(), 1024, torch.bfloat16
    else:
        cfg = dataclasses.replace(ZImageConfig.tiny(), dim=128, n_heads=2, n_layers=2, cap_feat_dim=64,
                                  axes_dims=(16, 24, 24))
        px, dtype, steps = 256, torch.float32, min(steps, 3)
    h = w = px // 8
    cap_len = _prompt_ids(151936, device).shape[1]
    print(f"zimage device={device} ({torch.cuda.get_device_name() if gpu else 'cpu'}) torch={torch.__version__} "
          f"dim={cfg.dim} layers={cfg.n_layers}+2x{cfg.n_refiner_layers} {px}px caption={cap_len} tokens batch 1 "
          f"{steps} steps {dtype}")
    with torch.inference_mode():
        with torch.device("meta"):
            shape_model = ZImage(cfg)
        sd = _random_weights(shape_model, device, dtype)
        ours = _build(ZImage, cfg, sd)
        ref = _diffusers(cfg, sd)
        gen = torch.Generator(device=device).manual_seed(1)
        x = torch.randn(1, 16, h, w, generator=gen, device=device, dtype=dtype)
        cap = torch.randn(1, cap_len, cfg.cap_feat_dim, generator=gen, device=device, dtype=dtype)
        ts = 1.0 - torch.linspace(1.0, 0.05, steps + 1, device=device)  # the transformer's t = 1 - sigma

        def step_ours(model):
            return lambda i: model(x, ts[i:i + 1], cap)

        def step_ref(i):
            return ref([x[0][:, None]], ts[i:i + 1], [cap[0]], return_dict=False)[0][0][:, 0][None]

        a, b = step_ours(ours)(0).float(), step_ref(0).float()
        t_ours, t_ref = _time(step_ours(ours), steps, device), _time(step_ref, steps, device)
        print(f"zimage {str(dtype)[6:]} ours {t_ours:8.4f} s/step  diffusers {t_ref:8.4f} s/step  "
              f"ratio {t_ref / t_ours:.3f}  max|d|={(a - b).abs().max().item():.2e} "
              f"rel L2 {((a - b).norm() / b.norm()).item():.2e}")
        ref = None  # drop diffusers (its tensors mostly alias ours)
        if gpu:
            torch.cuda.empty_cache()
        fp8_sd = {k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}
        variants = [("fp8 cast", CastLinear)]
        if fp8_matmul_supported(device):
            variants.append(("fp8 matmul (fp8_e4m3fn_fast)", FP8MatmulLinear))
        for name, linear in variants:
            m = _build(ZImage, cfg, fp8_sd, linear)
            m.compute_dtype = dtype
            c = step_ours(m)(0).float()
            rel = ((c - a).norm() / a.norm()).item()
            t = _time(step_ours(m), steps, device)
            mem = sum(p.numel() * p.element_size() for p in m.parameters()) / 2**30
            print(f"zimage {name:28s} {t:8.4f} s/step  vs {str(dtype)[6:]} ours ratio {t_ours / t:.3f}  "
                  f"weights {mem:.1f} GiB  rel L2 vs {str(dtype)[6:]} {rel:.3f}")
            del m
        del ours, sd, fp8_sd
        if gpu:
            print(f"zimage peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
            torch.cuda.empty_cache()
    run_text_encoder(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    run(torch.device(args.device), args.steps)


if __name__ == "__main__":
    main()
