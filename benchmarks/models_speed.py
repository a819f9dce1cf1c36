"""Speed of our UNet, VAE decode and CLIP text encoder against diffusers/transformers.

Both sides get identical random weights (LDM layout, converted for the peer with diffusers' own
converters) and run in the same process; the script prints times and ratios (peer / ours, so > 1
means we are faster).

CPU (default without CUDA): small configs, fp32.  GPU: SD1.5 sizes in fp16 at 512 px, the UNet at
CFG batch 2 for 20 steps, VAE decode of one 64x64 latent, CLIP at batch 2; SDXL's base UNet in
fp16 at 1024 px (latent 128x128) at CFG batch 2 with its ``y`` input (diffusers:
``added_cond_kwargs``).  Reference on an H200: diffusers' eager SDXL UNet loop 18.95 it/s.

Flux (``--models flux``): see ``benchmarks/flux_speed.py`` (Flux.1-dev at 1024 px, bf16 and fp8).
Qwen-Image (``--models qwen_image``): see ``benchmarks/qwen_image_speed.py`` (the 20 B MMDiT at
1024 px, text-to-image and Edit with one reference, bf16 and fp8).
Z-Image (``--models zimage``): see ``benchmarks/zimage_speed.py`` (Z-Image-Turbo at 1024 px, bf16
and fp8, against diffusers; its Qwen3-4B text encoder against transformers).

Run: ``python benchmarks/models_speed.py [--device cpu|cuda] [--steps N] [--models sd1,sdxl,flux,zimage,qwen_image]``
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from comfy_notebook.models.unet import UNetConfig, UNetModel
from comfy_notebook.models.vae import AutoencoderKL, VAEConfig
from comfy_notebook.testing import random_state_dict


def _timeit(
    ours: Callable[[], object], peer: Callable[[], object], repeat: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds per call of (ours, peer), alternating the two after one warm-up each."""
    ours()
    peer()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(2 * repeat):
        fn, acc = (ours, times[0]) if i % 2 == 0 else (peer, times[1])
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        acc.append(time.perf_counter() - t0)
    return sorted(times[0])[repeat // 2], sorted(times[1])[repeat // 2]


def _build(cls, cfg, dtype, device):
    with torch.device("meta"):
        model = cls(cfg)
    sd = random_state_dict(model, 0, tag=cls.__name__)
    model.load_state_dict(sd, assign=True)
    return model.to(device=device, dtype=dtype).eval(), sd


def _diffusers_unet(cfg: UNetConfig, sd, dtype, device):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    heads = cfg.num_heads if cfg.num_heads > 0 else [
        cfg.model_channels * m // cfg.num_head_channels for m in cfg.channel_mult]
    dcfg = dict(
        sample_size=64, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in cfg.transformer_depth],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(cfg.depth_output)],
        block_out_channels=[cfg.model_channels * m for m in cfg.channel_mult],
        layers_per_block=cfg.num_res_blocks, cross_attention_dim=cfg.context_dim,
        attention_head_dim=heads, use_linear_projection=cfg.use_linear_in_transformer,
        transformer_layers_per_block=[*(max(d, 1) for d in cfg.transformer_depth[:-1]),
                                      cfg.transformer_depth[-1] or cfg.depth_middle],
    )
    if cfg.adm_in_channels is not None:
        dcfg.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=cfg.adm_in_channels)
    with torch.device("meta"):
        ref = UNet2DConditionModel(**dcfg)
    ldm = {"model.diffusion_model." + k: v for k, v in sd.items()}
    ref.load_state_dict(convert_ldm_unet_checkpoint(ldm, dcfg), assign=True)
    return ref.to(device=device, dtype=dtype).eval()


def _diffusers_vae(cfg: VAEConfig, sd, dtype, device):
    from diffusers import AutoencoderKL as RefVAE
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    n = len(cfg.ch_mult)
    dcfg = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
                up_block_types=["UpDecoderBlock2D"] * n,
                block_out_channels=[cfg.ch * m for m in cfg.ch_mult],
                layers_per_block=cfg.num_res_blocks, latent_channels=cfg.z_channels)
    ref = RefVAE(**dcfg)
    ldm = {"first_stage_model." + k: v for k, v in sd.items()}
    ref.load_state_dict(convert_ldm_vae_checkpoint(ldm, dcfg))
    return ref.to(device=device, dtype=dtype).eval()


def _clip_pair(full: bool, dtype, device):
    """(ours, transformers) CLIP text models, or None when models/clip.py is absent."""
    try:
        from comfy_notebook.models.clip import CLIPTextConfig, CLIPTextModel
    except ImportError:
        return None
    from transformers import CLIPTextConfig as HFConfig
    from transformers import CLIPTextModel as HFModel

    cfg = CLIPTextConfig.sd1() if full else dataclasses.replace(CLIPTextConfig.sd1(), layers=4)
    ours, sd = _build(CLIPTextModel, cfg, dtype, device)
    hf = HFModel(HFConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.width,
                          intermediate_size=cfg.intermediate, num_hidden_layers=cfg.layers,
                          num_attention_heads=cfg.heads, max_position_embeddings=cfg.max_positions,
                          hidden_act="quick_gelu", attn_implementation="sdpa"))
    hf_keys = hf.state_dict().keys()  # transformers 5 drops the "text_model." level
    sd = {k.removeprefix("text_model.") if k.removeprefix("text_model.") in hf_keys else k: v
          for k, v in sd.items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    if missing or unexpected:
        print(f"clip   transformers keys missing {missing} unexpected {unexpected}")
    return ours, hf.to(device=device, dtype=dtype).eval()


def _sdxl_unet(gpu: bool, dtype: torch.dtype, device: torch.device, steps: int) -> None:
    """SDXL base UNet, CFG batch 2 with ``y`` (1024 px on a GPU), ours against diffusers."""
    from comfy_notebook.families.sdxl import fourier_features

    if gpu:
        cfg, hw = UNetConfig.sdxl(), 128
    else:
        cfg = dataclasses.replace(UNetConfig.sdxl(), model_channels=64, transformer_depth=(0, 1, 2),
                                  context_dim=256, adm_in_channels=64 + 6 * 256)
        hw, steps = 16, min(steps, 5)
    pooled_width = cfg.adm_in_channels - 6 * 256
    print(f"SDXL UNet {cfg.model_channels}ch x{cfg.channel_mult} depth {cfg.transformer_depth}, "
          f"latent {hw}x{hw} ({hw * 8} px), CFG batch 2, {steps} steps")
    with torch.inference_mode():
        ours, sd = _build(UNetModel, cfg, dtype, device)
        ref = _diffusers_unet(cfg, sd, dtype, device)
        del sd
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, hw, hw, generator=g).to(device=device, dtype=dtype)
        ctx = torch.randn(2, 77, cfg.context_dim, generator=g).to(device=device, dtype=dtype)
        pooled = torch.randn(2, pooled_width, generator=g).to(device=device, dtype=dtype)
        time_ids = torch.tensor([[hw * 8.0, hw * 8.0, 0.0, 0.0, hw * 8.0, hw * 8.0]] * 2, device=device)
        y = torch.cat([pooled, fourier_features(time_ids[0].tolist(), device).repeat(2, 1).to(dtype)], dim=1)
        added = {"text_embeds": pooled, "time_ids": time_ids}
        ts = torch.linspace(999, 0, steps, device=device)

        def loop(diffusers: bool) -> Callable[[], object]:
            def run() -> object:
                out = None
                for t in ts:
                    tt = t.expand(2)
                    out = (ref(x, tt, ctx, added_cond_kwargs=added).sample if diffusers
                           else ours(x, tt, ctx, y=y))
                return out
            return run

        t0 = ts[:1].expand(2)
        diff = (ours(x, t0, ctx, y=y) - ref(x, t0, ctx, added_cond_kwargs=added).sample).abs().max()
        t_ours, t_ref = _timeit(loop(False), loop(True), 3 if gpu else 1, device)
        print(f"sdxl unet ours {steps / t_ours:8.2f} it/s  diffusers {steps / t_ref:8.2f} it/s  "
              f"ratio {t_ref / t_ours:.3f}  max|d|={diff.item():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", default="sd1,sdxl,flux",
                        help="comma-separated: sd1 (UNet, VAE, CLIP), sdxl (UNet), flux (benchmarks/flux_speed.py), "
                             "zimage (benchmarks/zimage_speed.py), qwen_image (benchmarks/qwen_image_speed.py)")
    args = parser.parse_args()
    device = torch.device(args.device)
    models = set(args.models.split(","))
    if "flux" in models:
        from benchmarks.flux_speed import run as run_flux

        run_flux(device, args.steps)
    if "zimage" in models:
        from benchmarks.zimage_speed import run as run_zimage

        run_zimage(device, min(args.steps, 8))  # the Turbo workflows' 8 steps
    if "qwen_image" in models:
        from benchmarks.qwen_image_speed import run as run_qwen_image

        run_qwen_image(device, args.steps)
    if not models - {"flux", "zimage", "qwen_image"}:
        return
    gpu = device.type == "cuda"
    dtype = torch.float16 if gpu else torch.float32
    torch.manual_seed(0)
    if gpu:
        ucfg, vcfg, hw, steps = UNetConfig.sd15(), VAEConfig.sd(), 64, args.steps
    else:
        ucfg = UNetConfig(model_channels=64, channel_mult=(1, 2, 4), transformer_depth=(1, 1, 1))
        vcfg, hw, steps = dataclasses.replace(VAEConfig.sd(), ch=64), 32, min(args.steps, 5)
    print(f"device={device} ({torch.cuda.get_device_name() if gpu else 'cpu'}) dtype={dtype} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")
    models = set(args.models.split(","))
    if "sdxl" in models:
        _sdxl_unet(gpu, dtype, device, args.steps)
        if gpu:
            torch.cuda.empty_cache()
    if "sd1" not in models:
        return
    print(f"UNet {ucfg.model_channels}ch x{ucfg.channel_mult}, latent {hw}x{hw}, batch 2, {steps} steps")

    with torch.inference_mode():
        ours, sd = _build(UNetModel, ucfg, dtype, device)
        ref = _diffusers_unet(ucfg, sd, dtype, device)
        del sd
        x = torch.randn(2, 4, hw, hw, device=device, dtype=dtype)
        ctx = torch.randn(2, 77, ucfg.context_dim, device=device, dtype=dtype)
        ts = torch.linspace(999, 0, steps, device=device)

        def loop(model, diffusers: bool):
            def run():
                for t in ts:
                    tt = t.expand(2)
                    out = model(x, tt, ctx).sample if diffusers else model(x, tt, ctx)
                return out
            return run

        diff = (ours(x, ts[:1].expand(2), ctx) - ref(x, ts[:1].expand(2), ctx).sample).abs().max()
        t_ours, t_ref = _timeit(loop(ours, False), loop(ref, True), 5, device)
        print(f"unet   ours {steps / t_ours:8.2f} it/s  diffusers {steps / t_ref:8.2f} it/s  "
              f"ratio {t_ref / t_ours:.3f}  max|d|={diff.item():.2e}")
        del ours, ref

        vae, vsd = _build(AutoencoderKL, vcfg, dtype, device)
        vref = _diffusers_vae(vcfg, vsd, dtype, device)
        del vsd
        z = torch.randn(1, 4, hw, hw, device=device, dtype=dtype)
        diff = (vae.decode(z) - vref.decode(z).sample).abs().max()
        t_ours, t_ref = _timeit(lambda: vae.decode(z), lambda: vref.decode(z).sample, 5, device)
        print(f"vae decode {hw * 8}px ours {t_ours * 1e3:8.1f} ms  diffusers {t_ref * 1e3:8.1f} ms  "
              f"ratio {t_ref / t_ours:.3f}  max|d|={diff.item():.2e}")

        pair = _clip_pair(gpu, dtype, device)
        if pair is None:
            print("clip   skipped (comfy_notebook.models.clip not present)")
            return
        clip, hf = pair
        tokens = torch.randint(0, 49406, (2, 77), device=device)
        out = clip(tokens)
        ours_hidden = out[0] if isinstance(out, tuple) else out
        diff = (ours_hidden - hf(tokens).last_hidden_state).abs().max()
        t_ours, t_ref = _timeit(lambda: clip(tokens), lambda: hf(tokens), 11, device)
        print(f"clip   ours {t_ours * 1e3:8.2f} ms  transformers {t_ref * 1e3:8.2f} ms  "
              f"ratio {t_ref / t_ours:.3f}  max|d|={diff.item():.2e}")


if __name__ == "__main__":
    main()
