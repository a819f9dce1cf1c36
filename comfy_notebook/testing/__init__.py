"""Random-weight model files with the released key layouts, for tests, benchmarks and demos.

Nothing here downloads anything.  Every tensor is drawn per key from a generator seeded by
``(seed, part)``, so files are deterministic for a given seed and preset.  The writers live in
small modules named for what they write; import them from here:

- ``presets``: the SD-family layouts (:data:`PRESETS`, :func:`get_preset`);
- ``_core``: :func:`random_state_dict`, :func:`schedule_buffers` and the save helpers;
- ``checkpoints``: single-file checkpoints, separate UNet / VAE / text-encoder files;
- ``loras``: LoRAs, textual-inversion embeddings, hypernetworks;
- ``control``: ControlNet, T2I-Adapter, control-LoRA, GLIGEN, style model, CLIP vision;
- ``upscale``: ESRGAN upscalers; ``images``: test images;
- ``flux``, ``zimage``, ``qwen_image``: the DiT families' files (transformer, text encoders, VAE;
  ``qwen_image`` also holds the Qwen2.5-VL encoder and the Wan-2.1 VAE).
"""

from __future__ import annotations

from comfy_notebook.testing._core import random_state_dict, schedule_buffers
from comfy_notebook.testing.checkpoints import (
    make_checkpoint,
    make_text_encoder_file,
    make_unet_file,
    make_vae_file,
)
from comfy_notebook.testing.control import (
    make_clip_vision,
    make_control_lora,
    make_controlnet,
    make_gligen,
    make_style_model,
    make_t2i_adapter,
)
from comfy_notebook.testing.flux import (
    FLUX_CONTROLNET_KINDS,
    FLUX_PRESETS,
    make_flux_controlnet,
    make_flux_file,
    make_t5_file,
)
from comfy_notebook.testing.images import make_masked_image as make_masked_image
from comfy_notebook.testing.loras import make_embedding, make_hypernetwork, make_lora
from comfy_notebook.testing.presets import PRESETS, Preset, get_preset, preset_configs
from comfy_notebook.testing.qwen_image import (
    QWEN25VL_TINY,
    QWEN_IMAGE_PRESETS,
    WAN_VAE_PRESETS,
    make_qwen25vl_file,
    make_qwen_image_file,
    make_wan_vae_file,
    random_qwen_image_state_dict,
    random_wan_vae_state_dict,
)
from comfy_notebook.testing.upscale import make_esrgan
from comfy_notebook.testing.zimage import (
    QWEN3_TINY,
    ZIMAGE_PRESETS,
    ZIMAGE_TINY,
    make_qwen3_file,
    make_zimage_file,
)

# ``make_masked_image`` is importable by name but, as before, not part of ``__all__``.
__all__ = [
    "FLUX_CONTROLNET_KINDS",
    "FLUX_PRESETS",
    "PRESETS",
    "QWEN3_TINY",
    "QWEN25VL_TINY",
    "QWEN_IMAGE_PRESETS",
    "WAN_VAE_PRESETS",
    "ZIMAGE_PRESETS",
    "ZIMAGE_TINY",
    "Preset",
    "get_preset",
    "make_checkpoint",
    "make_clip_vision",
    "make_control_lora",
    "make_controlnet",
    "make_embedding",
    "make_esrgan",
    "make_flux_controlnet",
    "make_flux_file",
    "make_gligen",
    "make_hypernetwork",
    "make_lora",
    "make_qwen3_file",
    "make_qwen25vl_file",
    "make_qwen_image_file",
    "make_style_model",
    "make_t2i_adapter",
    "make_t5_file",
    "make_text_encoder_file",
    "make_unet_file",
    "make_vae_file",
    "make_wan_vae_file",
    "make_zimage_file",
    "preset_configs",
    "random_qwen_image_state_dict",
    "random_state_dict",
    "random_wan_vae_state_dict",
    "schedule_buffers",
]
