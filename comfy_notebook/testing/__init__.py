"""Random-weight checkpoints with the released key layouts (SD1, SD2, SDXL), for tests and benchmarks.

Nothing here downloads anything.  Every tensor is drawn per key from a generator seeded by
``(seed, part)``, so files are deterministic for a given seed and preset.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import zlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from comfy_notebook.models.clip import CLIPTextConfig
from comfy_notebook.models.detect import UNET_PREFIX, VAE_PREFIX
from comfy_notebook.models.unet import UNetConfig, UNetModel
from comfy_notebook.models.vae import AutoencoderKL, VAEConfig

__all__ = [
    "PRESETS",
    "Preset",
    "get_preset",
    "make_checkpoint",
    "make_clip_vision",
    "make_control_lora",
    "make_controlnet",
    "make_embedding",
    "make_esrgan",
    "make_gligen",
    "make_hypernetwork",
    "make_lora",
    "make_style_model",
    "make_t2i_adapter",
    "make_text_encoder_file",
    "make_unet_file",
    "make_vae_file",
    "preset_configs",
    "random_state_dict",
    "schedule_buffers",
]


@dataclass(frozen=True)
class Preset:
    """A test checkpoint layout: configs, and each text encoder's (prefix, key layout, config)."""

    family: str
    unet: UNetConfig
    vae: VAEConfig
    encoders: dict[str, tuple[str, str, CLIPTextConfig]]
    v_probe_std: float | None = None  # SD2: std of the norm bias ComfyUI's v detection reads
    markers: tuple[str, ...] = ()  # SDXL: "v_pred" / "ztsnr" marker keys
    full: bool = False
    vision: Any = None  # unCLIP: the image tower's CLIPVisionConfig (under embedder.model.visual.)


def _tiny_clip(activation: str = "quick_gelu", projection: bool = False) -> CLIPTextConfig:
    return dataclasses.replace(CLIPTextConfig.tiny(), activation=activation,
                               projection_dim=64 if projection else None)


_SD1_CLIP = "cond_stage_model.transformer."
_SD2_CLIP = "cond_stage_model.model."
_XL_L, _XL_G, _REFINER_G = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.",
                            "conditioner.embedders.0.model.")


def _sd2_tiny() -> UNetConfig:
    # four levels with two res blocks: output block 11 exists (ComfyUI's v-prediction probe)
    return UNetConfig(model_channels=64, channel_mult=(1, 1, 1, 1), num_res_blocks=2,
                      transformer_depth=(1, 1, 1, 0), context_dim=64, num_heads=-1,
                      num_head_channels=64, use_linear_in_transformer=True)


def _sdxl_tiny(refiner: bool) -> UNetConfig:
    ctx = 64 if refiner else 128  # CLIP-G alone, or CLIP-L + CLIP-G
    adm = 64 + (5 if refiner else 6) * 256  # pooled CLIP-G + 256-wide Fourier features
    return UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(0, 1),
                      context_dim=ctx, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
                      adm_in_channels=adm)


def get_preset(name: str) -> Preset:
    """The layout of a preset name (see :data:`PRESETS`)."""
    tiny = VAEConfig.tiny()
    if name in ("sd1-tiny", "sd1-tiny-linear"):
        unet = UNetConfig.sd1_tiny() if name == "sd1-tiny" else UNetConfig.sd1_tiny_linear()
        clip = _tiny_clip()
        return Preset("sd1", dataclasses.replace(unet, context_dim=clip.width), tiny,
                      {"clip_l": (_SD1_CLIP, "hf", clip)})
    if name == "sd1-full":
        return Preset("sd1", UNetConfig.sd15(), VAEConfig.sd(), {"clip_l": (_SD1_CLIP, "hf", CLIPTextConfig.sd1())},
                      full=True)
    if name == "sd1-comfyui":
        # The smallest SD1 file ComfyUI itself loads: it recognises SD1.5 by a 320-channel UNet
        # with 768-wide context and builds CLIP-L and the VAE at their real sizes whatever the
        # file holds, so those two are real-sized here (about 0.4 GB in fp16).
        small = UNetConfig(model_channels=320, channel_mult=(1,), num_res_blocks=1,
                           transformer_depth=(1,), context_dim=768)
        return Preset("sd1", small, VAEConfig.sd(), {"clip_l": (_SD1_CLIP, "hf", CLIPTextConfig.sd1())},
                      full=True)
    if name in ("sd2", "sd2-v"):
        return Preset("sd2", _sd2_tiny(), tiny, {"clip_h": (_SD2_CLIP, "openclip", _tiny_clip("gelu", True))},
                      v_probe_std=0.2 if name == "sd2-v" else 0.03)
    if name == "sd2-full":
        return Preset("sd2", UNetConfig.sd21(), VAEConfig.sd(),
                      {"clip_h": (_SD2_CLIP, "openclip", CLIPTextConfig.clip_h())}, full=True)
    if name == "sdxl":
        return Preset("sdxl", _sdxl_tiny(False), tiny, {"clip_l": (_XL_L, "hf", _tiny_clip()),
                                                        "clip_g": (_XL_G, "openclip", _tiny_clip("gelu", True))})
    if name == "sdxl-full":
        return Preset("sdxl", UNetConfig.sdxl(), VAEConfig.sd(),
                      {"clip_l": (_XL_L, "hf", CLIPTextConfig.sd1()),
                       "clip_g": (_XL_G, "openclip", CLIPTextConfig.clip_g())}, full=True)
    if name == "sdxl-refiner":
        return Preset("sdxl_refiner", _sdxl_tiny(True), tiny,
                      {"clip_g": (_REFINER_G, "openclip", _tiny_clip("gelu", True))})
    if name == "sdxl-refiner-full":
        return Preset("sdxl_refiner", UNetConfig.sdxl_refiner(), VAEConfig.sd(),
                      {"clip_g": (_REFINER_G, "openclip", CLIPTextConfig.clip_g())}, full=True)
    if name in ("sd2-unclip", "sd2-unclip-v"):
        from comfy_notebook.models.clip_vision import CLIPVisionConfig

        vision = CLIPVisionConfig(width=64, layers=2, heads=16, intermediate=128, patch_size=7,
                                  image_size=28, projection_dim=32, activation="quick_gelu")
        unet = dataclasses.replace(_sd2_tiny(), adm_in_channels=2 * vision.projection_dim)
        return Preset("sd2_unclip", unet, tiny, {"clip_h": (_SD2_CLIP, "openclip", _tiny_clip("gelu", True))},
                      v_probe_std=0.2 if name == "sd2-unclip-v" else 0.03, vision=vision)
    raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")


PRESETS = ("sd1-tiny", "sd1-tiny-linear", "sd1-full", "sd1-comfyui", "sd2", "sd2-v", "sd2-full", "sdxl", "sdxl-full",
           "sdxl-refiner", "sdxl-refiner-full", "sd2-unclip", "sd2-unclip-v")


def preset_configs(preset: str) -> tuple[UNetConfig, VAEConfig, Any]:
    """(UNet, VAE, first text encoder) configurations of a preset name."""
    p = get_preset(preset)
    return p.unet, p.vae, next(iter(p.encoders.values()))[2]


def random_state_dict(
    module: nn.Module, seed: int, dtype: torch.dtype = torch.float32, tag: str = ""
) -> dict[str, Tensor]:
    """Random weights for ``module`` (may live on ``meta``): key -> tensor.

    Matrices and conv kernels ~ N(0, 1/fan_in) so activations stay O(1); norm weights
    1 + N(0, 0.1^2); other vectors N(0, 0.1^2).  Integer buffers are left out.
    """
    norm_params = {
        f"{name}.{p}" if name else p
        for name, m in module.named_modules()
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm))
        for p in ("weight",)
    }
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(tag.encode()))
    out: dict[str, Tensor] = {}
    for key, like in sorted(module.state_dict().items()):
        if not like.is_floating_point():
            continue
        shape = tuple(like.shape)
        t = torch.randn(shape, generator=gen)
        if len(shape) >= 2:
            t *= (like[0].numel()) ** -0.5
        elif key in norm_params or key.endswith((".scale", "layer_norm.weight")):  # incl. RMS norms
            t = 1.0 + 0.1 * t
        else:
            t *= 0.1
        out[key] = t.to(dtype)
    return out


def schedule_buffers(beta_start: float = 0.00085, beta_end: float = 0.012, n: int = 1000) -> dict[str, Tensor]:
    """The DDPM schedule buffers real LDM files carry (``betas``, ``alphas_cumprod``, ...)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1.0 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas[:-1]])
    bufs = {
        "betas": betas, "alphas_cumprod": alphas, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - alphas).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - alphas).log(),
        "sqrt_recip_alphas_cumprod": (1 / alphas).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / alphas - 1).sqrt(),
    }
    return {k: v.float() for k, v in bufs.items()}


def _meta(cls: type[nn.Module], config: Any) -> nn.Module:
    with torch.device("meta"):
        return cls(config)


def _clip_tensors(clip_config: Any, seed: int, dtype: torch.dtype, layout: str = "hf",
                  tag: str = "clip") -> dict[str, Tensor]:
    from comfy_notebook.models.clip import CLIPTextModel
    from comfy_notebook.models.convert import hf_to_openclip

    sd = random_state_dict(_meta(CLIPTextModel, clip_config), seed, dtype, tag)
    if layout == "openclip":
        out = hf_to_openclip(sd)
        out["logit_scale"] = torch.tensor(4.6052, dtype=dtype)
        return out
    n = clip_config.max_positions
    sd["text_model.embeddings.position_ids"] = torch.arange(n, dtype=torch.int64)[None]
    return sd


def _save(tensors: dict[str, Tensor], path: str | os.PathLike[str]) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def make_checkpoint(
    path: str | os.PathLike[str],
    preset: str = "sd1-tiny",
    seed: int = 0,
    *,
    dtype: torch.dtype | None = None,
    unet: UNetConfig | None = None,
    vae: VAEConfig | None = None,
    clip: Any = None,
) -> str:
    """Write a random-weight single-file checkpoint with a released key layout.

    Parameters
    ----------
    path:
        Output ``.safetensors`` path.
    preset:
        One of :data:`PRESETS`: ``"sd1-tiny"`` (a few MB), ``"sd1-tiny-linear"`` (linear
        projections, uneven transformer depth), ``"sd2"`` / ``"sd2-v"`` (OpenCLIP text tower
        under ``cond_stage_model.model.``, eps / v by ComfyUI's weight statistic), ``"sdxl"``
        (CLIP-L + OpenCLIP-G under ``conditioner.embedders.*``, ``label_emb``),
        ``"sdxl-refiner"``; ``*-full`` presets have the real sizes (GBs: for shape tests).
    seed:
        Same seed and preset give the same file.
    dtype:
        Weight dtype; ``None``: float32, float16 for full-size presets.
    unet, vae, clip:
        Override the preset's configuration of that part (``clip``: the first text encoder).

    Returns
    -------
    str
        The path written (keys as the released files, plus position ids / schedule buffers).
    """
    p = get_preset(preset)
    unet, vae = unet or p.unet, vae or p.vae
    if dtype is None:
        dtype = torch.float16 if p.full else torch.float32
    tensors: dict[str, Tensor] = {}
    unet_sd = random_state_dict(_meta(UNetModel, unet), seed, dtype, "unet")
    probe = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    if p.v_probe_std is not None and probe in unet_sd:
        t = unet_sd[probe].float()
        unet_sd[probe] = ((t - t.mean()) / t.std(unbiased=False) * p.v_probe_std).to(dtype)
    for k, v in unet_sd.items():
        tensors[UNET_PREFIX + k] = v
    for k, v in random_state_dict(_meta(AutoencoderKL, vae), seed, dtype, "vae").items():
        tensors[VAE_PREFIX + k] = v
    for i, (name, (prefix, layout, config)) in enumerate(p.encoders.items()):
        config = clip if (clip is not None and i == 0) else config
        tag = "clip" if i == 0 else name
        for k, v in _clip_tensors(config, seed, dtype, layout, tag).items():
            tensors[prefix + k] = v
    if p.vision is not None:
        tensors.update(_unclip_tensors(p.vision, seed, dtype))
    if p.family in ("sd1", "sd2", "sd2_unclip"):
        tensors.update(schedule_buffers())
        tensors["model_ema.decay"] = torch.tensor(0.9999)
        tensors["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
    for marker in p.markers:
        tensors[marker] = torch.tensor([])
    _save(tensors, path)
    return str(path)


def _unclip_tensors(vision: Any, seed: int, dtype: torch.dtype) -> dict[str, Tensor]:
    """An SD 2.1 unCLIP file's extra parts: the OpenCLIP image tower under ``embedder.model.visual.``
    (plus the embedder's other leftovers) and the ``noise_augmentor`` schedule buffers."""
    from comfy_notebook.models.clip_vision import CLIPVisionModel
    from comfy_notebook.models.convert import hf_vision_to_openclip
    from comfy_notebook.models.noise_augment import cosine_schedule

    tower = random_state_dict(_meta(CLIPVisionModel, vision), seed, dtype, "clip_vision")
    out = {"embedder.model.visual." + k: v for k, v in hf_vision_to_openclip(tower).items()}
    out["embedder.model.logit_scale"] = torch.tensor(4.6052, dtype=dtype)
    # unCLIP-L's embedder is a whole OpenAI CLIP: its text tower's keys come along (unused)
    out["embedder.model.token_embedding.weight"] = torch.zeros(16, 8, dtype=dtype)
    out["embedder.model.transformer.resblocks.0.ln_1.weight"] = torch.ones(8, dtype=dtype)
    out["embedder.model.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(24, 8, dtype=dtype)
    a, b = cosine_schedule()
    out["noise_augmentor.sqrt_alphas_cumprod"] = a
    out["noise_augmentor.sqrt_one_minus_alphas_cumprod"] = b
    out["noise_augmentor.alphas_cumprod"] = a * a
    return out


def make_clip_vision(path: str | os.PathLike[str], seed: int = 0, *, config: Any = None,
                     layout: str = "hf", dtype: torch.dtype = torch.float32) -> str:
    """Write a random CLIP image tower (``models/clip_vision``): transformers names (``"hf"``, as
    ComfyUI's clip_vision files) or OpenCLIP's under ``visual.`` (``"openclip"``); tiny by default."""
    from comfy_notebook.models.clip_vision import CLIPVisionConfig, CLIPVisionModel
    from comfy_notebook.models.convert import hf_vision_to_openclip

    config = config or CLIPVisionConfig(width=64, layers=2, heads=16, intermediate=128, patch_size=7,
                                        image_size=28, projection_dim=32)
    sd = random_state_dict(_meta(CLIPVisionModel, config), seed, dtype, "clip_vision")
    if layout == "openclip":
        sd = {"visual." + k: v for k, v in hf_vision_to_openclip(sd).items()}
    _save(sd, path)
    return str(path)


def make_style_model(path: str | os.PathLike[str], width: int = 64, context_dim: int = 64, seed: int = 0) -> str:
    """Write a random T2I-Adapter style model (``models/style_models``) in the released layout
    (3 layers, 8 heads, 8 tokens) for image tokens ``width`` wide and a ``context_dim`` UNet."""
    from comfy_notebook.models.style_adapter import StyleAdapter, StyleAdapterConfig

    model = _meta(StyleAdapter, StyleAdapterConfig(width, context_dim, 8, 3, 8))
    sd = random_state_dict(model, seed, torch.float32, "style")
    sd["proj"] = sd["proj"] * 4  # text-sized tokens
    _save(sd, path)
    return str(path)


def make_gligen(path: str | os.PathLike[str], preset: str = "sd1-tiny", seed: int = 0, *,
                dtype: torch.dtype = torch.float32) -> str:
    """Write a random GLIGEN (text-box) file for the UNet of ``preset``, in the released layout:
    ``position_net.*`` (phrases as wide as the text encoder's pooled output) and a
    ``<block>.fuser.*`` per transformer block; the gates are opened (tanh(1)) so the boxes show."""
    from comfy_notebook.models.gligen import GLIGEN
    from comfy_notebook.models.layers import BasicTransformerBlock

    p = get_preset(preset)
    width = next(iter(p.encoders.values()))[2].width
    unet = _meta(UNetModel, p.unet)
    fusers = {name: (int(m.attn1.to_q.weight.shape[1]), width) for name, m in unet.named_modules()
              if isinstance(m, BasicTransformerBlock)}
    with torch.device("meta"):
        model = GLIGEN(width, width, fusers)
    sd = random_state_dict(model, seed, dtype, "gligen")
    out: dict[str, Tensor] = {}
    for key, t in sd.items():
        if key.startswith("fusers."):
            i, leaf = key[len("fusers."):].split(".", 1)
            key = f"{model.blocks[int(i)]}.fuser.{leaf}"
            if leaf.startswith("alpha_"):
                t = torch.ones((), dtype=dtype)
        out[key] = t
    _save(out, path)
    return str(path)


def make_hypernetwork(path: str | os.PathLike[str], widths: tuple[int, ...] = (64, 320), seed: int = 0, *,
                      layer_structure: tuple[float, ...] = (1, 2, 1), activation_func: str = "relu",
                      is_layer_norm: bool = False, use_dropout: bool = False, last_layer_dropout: bool = False,
                      activate_output: bool = False) -> str:
    """Write a random hypernetwork in the A1111 format (``torch.save`` of a dict: width -> [key MLP
    state dict, value MLP state dict] with ``linear.N.*`` keys, plus the option keys A1111 saves)."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[Any, Any] = {}
    for width in widths:
        pair = []
        for _ in range(2):
            mlp: dict[str, Tensor] = {}
            index = 0
            sizes = [round(width * f) for f in layer_structure]
            for i, (a, b) in enumerate(itertools.pairwise(sizes)):
                last = i == len(sizes) - 2
                mlp[f"linear.{index}.weight"] = torch.randn(b, a, generator=gen) * (0.3 / a ** 0.5)
                mlp[f"linear.{index}.bias"] = torch.randn(b, generator=gen) * 0.05
                index += 1 + (activation_func != "linear" and (not last or activate_output))
                if is_layer_norm:
                    mlp[f"linear.{index}.weight"] = 1 + 0.1 * torch.randn(b, generator=gen)
                    mlp[f"linear.{index}.bias"] = 0.1 * torch.randn(b, generator=gen)
                    index += 1
                index += int(use_dropout and not last)
            pair.append(mlp)
        sd[width] = pair
    sd.update({"layer_structure": list(layer_structure), "activation_func": activation_func,
               "is_layer_norm": is_layer_norm, "weight_initialization": "Normal", "use_dropout": use_dropout,
               "last_layer_dropout": last_layer_dropout, "activate_output": activate_output,
               "name": os.path.splitext(os.path.basename(os.fspath(path)))[0], "step": 1000,
               "sd_checkpoint": "0123abcd", "sd_checkpoint_name": "tiny"})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(sd, os.fspath(path))
    return str(path)


def make_unet_file(path: str | os.PathLike[str], preset: str = "sdxl", seed: int = 0, *,
                   dtype: torch.dtype = torch.float32) -> str:
    """Write a diffusion-model file (``models/diffusion_models``): the preset's UNet, keys without prefix."""
    _save(random_state_dict(_meta(UNetModel, get_preset(preset).unet), seed, dtype, "unet"), path)
    return str(path)


def make_vae_file(
    path: str | os.PathLike[str],
    preset: str = "sd1-tiny",
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    config: VAEConfig | None = None,
) -> str:
    """Write a separate VAE file (keys ``encoder.*``, ``decoder.*``, no prefix), like
    ``vae-ft-mse-840000-ema-pruned.safetensors``.  Returns the path."""
    config = config or get_preset(preset).vae
    _save(random_state_dict(_meta(AutoencoderKL, config), seed, dtype, "vae"), path)
    return str(path)


def make_text_encoder_file(
    path: str | os.PathLike[str], preset: str = "sd1-tiny", seed: int = 0,
    *, dtype: torch.dtype = torch.float32, encoder: str | None = None,
) -> str:
    """Write a separate text-encoder file in transformers' layout (``text_model.*``, and
    ``text_projection.weight`` for CLIP-G), as ComfyUI's ``models/text_encoders`` files.

    ``encoder`` picks one of the preset's encoders (default: the first); each encoder's weights
    are the ones :func:`make_checkpoint` writes for the same preset and seed.
    """
    p = get_preset(preset)
    names = list(p.encoders)
    name = encoder or names[0]
    config = p.encoders[name][2]
    _save(_clip_tensors(config, seed, dtype, "hf", "clip" if names.index(name) == 0 else name), path)
    return str(path)


# LoRA leaves of a transformer block (attention projections and feed-forward), and of a CLIP layer.
_LORA_UNET_LEAVES = (".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn1.to_out.0",
                     ".attn2.to_q", ".attn2.to_k", ".attn2.to_v", ".attn2.to_out.0",
                     ".ff.net.0.proj", ".ff.net.2", ".proj_in", ".proj_out")
_LORA_CLIP_LEAVES = (".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj",
                     ".self_attn.out_proj", ".mlp.fc1", ".mlp.fc2")


def make_lora(
    path: str | os.PathLike[str],
    checkpoint_path: str | os.PathLike[str],
    *,
    rank: int = 4,
    style: str = "kohya",
    seed: int = 0,
    alpha: float | None = None,
    include_clip: bool = True,
) -> str:
    """Write a random LoRA that fits the checkpoint at ``checkpoint_path``.

    It targets the attention projections, feed-forward layers and ``proj_in``/``proj_out`` of
    every UNet transformer block, and (``include_clip``) the attention and MLP projections of
    every CLIP text layer.  1x1 convolutions get conv-shaped factors.

    Parameters
    ----------
    path:
        Output ``.safetensors`` path.
    checkpoint_path:
        A single-file SD1 checkpoint (e.g. from :func:`make_checkpoint`); only its key names
        and shapes are read.
    rank:
        LoRA rank (rows of ``lora_down``).
    style:
        ``"kohya"``: ``lora_unet_<diffusers module>`` / ``lora_te_<transformers module>``, the
        names A1111-era trainers write (the UNet names follow the checkpoint's block layout);
        ``"comfy"``: ``diffusion_model.<LDM module>`` / ``cond_stage_model.transformer.<module>``,
        the checkpoint's own module names.
    seed:
        Same seed, checkpoint and options give the same file; both styles draw the same
        tensors in the same order, so a kohya and a comfy file of one seed are the same LoRA.
    alpha:
        Written as ``<module>.alpha`` when given (scale ``alpha / rank``); absent means scale 1.
    include_clip:
        Also patch the text encoder.

    Returns
    -------
    str
        The path written.
    """
    from comfy_notebook.families import detect
    from comfy_notebook.models.convert import OpenCLIPView
    from comfy_notebook.runtime.loading import open_state_dict
    from comfy_notebook.runtime.lora import UNetLayout, unet_diffusers_to_ldm

    if style not in ("kohya", "comfy"):
        raise ValueError(f"unknown LoRA style {style!r}; expected 'kohya' or 'comfy'")
    sd = open_state_dict(checkpoint_path)
    info = detect(sd, source=os.fspath(checkpoint_path))
    unet_p = info.prefixes.get("unet", UNET_PREFIX)
    shapes = {k: tuple(sd[k].shape) for k in sd if k.endswith(".weight")}
    targets: list[tuple[str, tuple[int, ...]]] = []  # (LoRA module name, weight shape)
    ldm_to_diffusers = {}
    if style == "kohya" and info.unet is not None:
        table = unet_diffusers_to_ldm(UNetLayout.from_config(info.unet))
        ldm_to_diffusers = {ldm: diff for diff, ldm in table.items()}
    for key, shape in sorted(shapes.items()):
        module = key[: -len(".weight")]
        if key.startswith(unet_p) and module.endswith(_LORA_UNET_LEAVES):
            ldm = module[len(unet_p):]
            if style == "kohya":
                if ldm not in ldm_to_diffusers:
                    continue
                targets.append(("lora_unet_" + ldm_to_diffusers[ldm].replace(".", "_"), shape))
            else:
                targets.append(("diffusion_model." + ldm, shape))
    family = info.family
    for enc, comp in (info.text_encoders.items() if include_clip else ()):
        view: Any = OpenCLIPView(sd, comp.prefix) if comp.layout == "openclip" else {
            k[len(comp.prefix):]: v for k, v in sd.items() if k.startswith(comp.prefix)}
        kohya = next((p for p, e in (family.lora_te_prefixes.items() if family else ()) if e == enc), "lora_te_")
        for name in sorted(view):
            if not name.endswith(".weight") or not name[:-7].endswith(_LORA_CLIP_LEAVES):
                continue
            shape = tuple(view[name].shape)
            module = name[:-7]
            if style == "kohya":
                targets.append((kohya + module.replace(".", "_"), shape))
            elif comp.layout == "hf":
                targets.append((comp.prefix + module, shape))
            else:
                targets.append((f"text_encoders.{enc}.transformer.{module}", shape))
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(b"lora"))
    tensors: dict[str, Tensor] = {}
    for name, shape in targets:
        out_ch, in_ch = shape[0], shape[1]
        kernel = tuple(shape[2:])  # () for Linear, (1, 1) for 1x1 convs
        down = torch.randn((rank, in_ch, *kernel), generator=gen) * in_ch**-0.5
        up = torch.randn((out_ch, rank, *(1 for _ in kernel)), generator=gen) * rank**-0.5
        tensors[f"{name}.lora_down.weight"] = down
        tensors[f"{name}.lora_up.weight"] = up
        if alpha is not None:
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    _save(tensors, path)
    return str(path)


def make_embedding(
    path: str | os.PathLike[str], dim: int, n_vectors: int = 2, seed: int = 0,
    format: str = "safetensors",
) -> str:
    """Write a random textual-inversion embedding of ``n_vectors`` vectors of width ``dim``.

    ``format="safetensors"`` writes ``{"emb_params": [n, dim]}`` (A1111's safetensors layout);
    ``"pt"`` a weights-only torch file ``{"string_to_param": {"*": [n, dim]}, ...}``.  Vectors
    are N(0, 0.02^2)-sized, like CLIP token embeddings.  Returns the path.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    vectors = torch.randn((n_vectors, dim), generator=gen) * 0.02  # [n, D]
    if format == "safetensors":
        _save({"emb_params": vectors}, path)
    elif format == "pt":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors},
                    "name": os.path.splitext(os.path.basename(path))[0], "step": 0}, path)
    else:
        raise ValueError(f"unknown embedding format {format!r}; expected 'safetensors' or 'pt'")
    return str(path)


def make_masked_image(path: str | os.PathLike[str], size: int = 64, seed: int = 0) -> str:
    """Write an RGBA PNG of random colours whose left half is transparent.

    ``LoadImage`` reads it as an IMAGE and a MASK that is 1 on the left half (ComfyUI's
    mask = 1 - alpha): the shape inpainting tests need.  Returns the path.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., :3] = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    rgba[:, size // 2:, 3] = 255  # opaque right half; the transparent left half is the mask
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(path)
    return os.fspath(path)


def _unet_config_of(checkpoint_path: str | os.PathLike[str]) -> UNetConfig:
    from comfy_notebook.families import detect
    from comfy_notebook.runtime.loading import open_state_dict

    info = detect(open_state_dict(checkpoint_path), source=os.fspath(checkpoint_path))
    if info.unet is None:
        raise ValueError(f"{checkpoint_path} has no UNet to build a control model for")
    return info.unet


def make_controlnet(
    path: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str], *, layout: str = "original",
    seed: int = 0, hint_channels: int = 3, dtype: torch.dtype = torch.float32, difference: bool = False,
    union_types: int | None = None,
) -> str:
    """Write a random ControlNet for the UNet of the checkpoint at ``checkpoint_path``.

    Parameters
    ----------
    layout:
        ``"original"``: keys ``control_model.*`` (lllyasviel's files); ``"bare"``: the same keys
        without the prefix; ``"diffusers"``: diffusers ``ControlNetModel`` keys
        (``controlnet_cond_embedding.*``, ``controlnet_down_blocks.*``, ``down_blocks.*``).
    difference:
        Write a "diff" ControlNet (original layout): weights minus the checkpoint's UNet weights
        where both have the key, plus a ``difference`` marker, as the old diff files hold.
    union_types:
        Write a union (ControlNet++) net knowing this many control types (xinsir's files are in
        the diffusers layout, whose attention is ``attn.in_proj_weight`` / ``in_proj_bias``).

    Returns
    -------
    str
        The path written.  Same seed, checkpoint and options give the same file.
    """
    from comfy_notebook.models.controlnet import ControlNetConfig, ControlNetModel

    if layout not in ("original", "bare", "diffusers"):
        raise ValueError(f"unknown ControlNet layout {layout!r}; expected 'original', 'bare' or 'diffusers'")
    config = ControlNetConfig(_unet_config_of(checkpoint_path), hint_channels=hint_channels,
                              union_types=union_types)
    sd = random_state_dict(_meta(ControlNetModel, config), seed, dtype, "controlnet")
    if difference:
        from comfy_notebook.runtime.loading import open_state_dict

        base = open_state_dict(checkpoint_path)
        sd = {k: (v - base[UNET_PREFIX + k].to(v.dtype)) if UNET_PREFIX + k in base else v for k, v in sd.items()}
    if layout == "diffusers":
        from comfy_notebook.runtime.control_files import diffusers_controlnet_modules
        from comfy_notebook.runtime.lora import UNetLayout

        to_diffusers = {ldm: diff for diff, ldm in diffusers_controlnet_modules(UNetLayout.from_config(config.unet)).items()}
        out = {}
        for k, v in sd.items():
            module, _, leaf = k.rpartition(".")
            if module in to_diffusers:
                out[f"{to_diffusers[module]}.{leaf}"] = v
            else:  # union parts keep their names; the attention is packed as nn.MultiheadAttention
                out[k.replace(".attn.in_proj.", ".attn.in_proj_")] = v
        sd = out
    elif layout == "original":
        sd = {"control_model." + k: v for k, v in sd.items()}
    if difference:
        sd["difference"] = torch.tensor(1.0)
    _save(sd, path)
    return str(path)


def make_t2i_adapter(
    path: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str], *, kind: str = "full",
    layout: str = "original", input_channels: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32,
) -> str:
    """Write a random T2I-Adapter whose levels match the checkpoint's UNet widths.

    ``kind`` is ``"full"`` (TencentARC's t2iadapter_*_sd14v1 layout: 1x1 ``in_conv``/``block2``,
    average-pool downsampling) or ``"light"``; ``layout`` ``"original"`` (``conv_in``, ``body.N.*``)
    or ``"diffusers"`` (``adapter.body.N.resnets.M.*``).  The features land after the last
    ResBlock of each level only when the UNet has 2 ResBlocks per level, as SD1/SD2 do.
    Returns the path.
    """
    from comfy_notebook.models.t2i_adapter import AdapterConfig, T2IAdapter

    if kind not in ("full", "light") or layout not in ("original", "diffusers"):
        raise ValueError(f"unknown adapter kind/layout {kind!r}/{layout!r}; expected full|light and original|diffusers")
    c = _unet_config_of(checkpoint_path).model_channels
    config = AdapterConfig(kind=kind, cin=input_channels * 64, channels=(c, 2 * c, 4 * c, 4 * c),
                           nums_rb=2 if kind == "full" else 4)
    sd = random_state_dict(_meta(T2IAdapter, config), seed, dtype, "t2i")
    if layout == "diffusers":
        out = {}
        for k, v in sd.items():
            parts = k.split(".")
            if parts[0] == "body" and kind == "full":
                i = int(parts[1])
                level, block = divmod(i, config.nums_rb)
                if parts[2] == "in_conv":
                    parts = ["body", str(level), *parts[2:]]
                else:
                    parts = ["body", str(level), "resnets", str(block), *parts[2:]]
            elif parts[0] == "body" and parts[2] == "body":
                parts = ["body", parts[1], "resnets", *parts[3:]]
            out["adapter." + ".".join(parts)] = v
        sd = out
    _save(sd, path)
    return str(path)


def make_control_lora(
    path: str | os.PathLike[str], checkpoint_path: str | os.PathLike[str], *, rank: int = 4, seed: int = 0,
    hint_channels: int = 3, dtype: torch.dtype = torch.float32,
) -> str:
    """Write a random control-LoRA for the checkpoint's UNet, in Stability's control-lora layout.

    Keys: ``lora_controlnet`` (the marker), the hint block, zero convs and every 1-d weight
    (norms, biases) of the ControlNet in full, and ``<module>.up`` [out, rank(, 1, 1)] /
    ``<module>.down`` [rank, in(, kh, kw)] for each matrix / conv kernel of the UNet encoder the
    ControlNet copies.  Returns the path.
    """
    from comfy_notebook.models.controlnet import ControlNetConfig, ControlNetModel

    config = ControlNetConfig(_unet_config_of(checkpoint_path), hint_channels=hint_channels)
    full = random_state_dict(_meta(ControlNetModel, config), seed, dtype, "controlnet")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(b"control-lora"))
    out: dict[str, Tensor] = {"lora_controlnet": torch.tensor([])}
    for key, value in full.items():
        own = key.startswith(("input_hint_block.", "zero_convs.", "middle_block_out."))
        if own or value.dim() < 2:
            out[key] = value
            continue
        module = key.removesuffix(".weight")
        o, i = value.shape[0], value.shape[1]
        kernel = tuple(value.shape[2:])
        out[module + ".up"] = (torch.randn((o, rank, *(1 for _ in kernel)), generator=gen) * rank**-0.5).to(dtype)
        down = torch.randn((rank, i, *kernel), generator=gen) * 0.1 * value[0].numel() ** -0.5
        out[module + ".down"] = down.to(dtype)
    _save(out, path)
    return str(path)


def make_esrgan(path: str | os.PathLike[str], *, layout: str = "realesrgan", scale: int = 4,
                num_feat: int = 8, num_block: int = 1, seed: int = 0) -> str:
    """Write a random RRDBNet upscaler in a released key layout (what spandrel detects).

    ``layout="realesrgan"``: BasicSR's RRDBNet names (``conv_first``, ``body.N.rdbK.convJ``,
    ``conv_body``, ``conv_up1/2``, ``conv_hr``, ``conv_last``) under ``params_ema``, as the
    RealESRGAN x4plus release ships them (scale 4 only).  ``layout="esrgan"``: the original
    ESRGAN sequential names (``model.0``, ``model.1.sub.N.RDBK.convJ.0``, ``model.{3,6,...}``).
    Growth channels are 32 as in every release.  ``.pth`` files are torch pickles,
    ``.safetensors`` hold the flat dict.
    """
    gc, nf, g = 32, num_feat, torch.Generator().manual_seed(seed)
    ups = {2: 1, 4: 2, 8: 3}[scale]

    def conv(cin: int, cout: int) -> tuple[Tensor, Tensor]:
        return torch.randn(cout, cin, 3, 3, generator=g) * (0.5 / (cin * 9) ** 0.5), torch.randn(cout, generator=g) * 0.01

    sd: dict[str, Tensor] = {}

    def put(name: str, cin: int, cout: int) -> None:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = conv(cin, cout)

    rdb = [(nf, gc), (nf + gc, gc), (nf + 2 * gc, gc), (nf + 3 * gc, gc), (nf + 4 * gc, nf)]
    if layout == "realesrgan":
        if scale != 4:
            raise ValueError("RealESRGAN layout files here are x4 (x2plus uses pixel-unshuffle)")
        put("conv_first", 3, nf)
        for b in range(num_block):
            for k in (1, 2, 3):
                for j, (cin, cout) in enumerate(rdb, 1):
                    put(f"body.{b}.rdb{k}.conv{j}", cin, cout)
        for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
            put(name, nf, nf)
        put("conv_last", nf, 3)
    elif layout == "esrgan":
        put("model.0", 3, nf)
        for b in range(num_block):
            for k in (1, 2, 3):
                for j, (cin, cout) in enumerate(rdb, 1):
                    put(f"model.1.sub.{b}.RDB{k}.conv{j}.0", cin, cout)
        put(f"model.1.sub.{num_block}", nf, nf)
        for u in range(ups):
            put(f"model.{3 + 3 * u}", nf, nf)
        put(f"model.{3 * ups + 2}", nf, nf)
        put(f"model.{3 * ups + 4}", nf, 3)
    else:
        raise ValueError(f"unknown layout {layout!r}; expected 'realesrgan' or 'esrgan'")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if str(path).endswith(".safetensors"):
        _save(sd, path)
    else:
        torch.save({"params_ema": sd} if layout == "realesrgan" else sd, str(path))
    return str(path)


# Flux.1 files (diffusion_models/, text_encoders/, vae/ layouts) live in their own module.
from comfy_notebook.testing.flux import (  # noqa: E402
    FLUX_CONTROLNET_KINDS,
    FLUX_PRESETS,
    make_flux_controlnet,
    make_flux_file,
    make_t5_file,
)

__all__ += ["FLUX_CONTROLNET_KINDS", "FLUX_PRESETS", "make_flux_controlnet", "make_flux_file", "make_t5_file"]

# Qwen-Image diffusion-model files (diffusion_models/qwen_image*.safetensors layout) live in their own module.
from comfy_notebook.testing.qwen_image import (  # noqa: E402
    QWEN_IMAGE_PRESETS,
    make_qwen_image_file,
    random_qwen_image_state_dict,
)

__all__ += ["QWEN_IMAGE_PRESETS", "make_qwen_image_file", "random_qwen_image_state_dict"]

# Z-Image files (diffusion_models/, text_encoders/ layouts) live in their own module.
from comfy_notebook.testing.zimage import (  # noqa: E402
    QWEN3_TINY,
    ZIMAGE_PRESETS,
    ZIMAGE_TINY,
    make_qwen3_file,
    make_zimage_file,
)

__all__ += ["QWEN3_TINY", "ZIMAGE_PRESETS", "ZIMAGE_TINY", "make_qwen3_file", "make_zimage_file"]

# Qwen2.5-VL text-encoder files (text_encoders/qwen_2.5_vl_7b* layout) live in their own module.
from comfy_notebook.testing.qwen25vl import QWEN25VL_TINY, make_qwen25vl_file  # noqa: E402

__all__ += ["QWEN25VL_TINY", "make_qwen25vl_file"]

# The Wan-2.1 VAE of Qwen-Image (vae/qwen_image_vae.safetensors layout) lives in its own module.
from comfy_notebook.testing.wan import (  # noqa: E402
    WAN_VAE_PRESETS,
    make_wan_vae_file,
    random_wan_vae_state_dict,
)

__all__ += ["WAN_VAE_PRESETS", "make_wan_vae_file", "random_wan_vae_state_dict"]
