"""``comfy_notebook.testing`` keeps its public surface: the names every test, benchmark and
notebook imports (the list below is the module's ``__all__`` before it became a package)."""

from __future__ import annotations

import importlib
import inspect

import comfy_notebook.testing as testing

PUBLIC = [
    "PRESETS", "Preset", "get_preset", "make_checkpoint", "make_clip_vision", "make_control_lora",
    "make_controlnet", "make_embedding", "make_esrgan", "make_gligen", "make_hypernetwork", "make_lora",
    "make_style_model", "make_t2i_adapter", "make_text_encoder_file", "make_unet_file", "make_vae_file",
    "preset_configs", "random_state_dict", "schedule_buffers",
    "FLUX_CONTROLNET_KINDS", "FLUX_PRESETS", "make_flux_controlnet", "make_flux_file", "make_t5_file",
    "QWEN_IMAGE_PRESETS", "make_qwen_image_file", "random_qwen_image_state_dict",
    "QWEN3_TINY", "ZIMAGE_PRESETS", "ZIMAGE_TINY", "make_qwen3_file", "make_zimage_file",
    "QWEN25VL_TINY", "make_qwen25vl_file",
    "WAN_VAE_PRESETS", "make_wan_vae_file", "random_wan_vae_state_dict",
]
# public but never listed in ``__all__``: imported by name in tests
EXTRA = ["make_masked_image"]


def test_all_is_unchanged() -> None:
    assert sorted(testing.__all__) == sorted(PUBLIC)
    assert len(testing.__all__) == len(set(testing.__all__))


def test_every_name_resolves() -> None:
    for name in PUBLIC + EXTRA:
        obj = getattr(testing, name)
        assert obj is not None, name
        if inspect.isfunction(obj) or inspect.isclass(obj):
            # the object really lives in the package (not a stale module elsewhere)
            assert obj.__module__.startswith("comfy_notebook.testing"), (name, obj.__module__)
            home = importlib.import_module(obj.__module__)
            assert getattr(home, obj.__name__) is obj


def test_star_import_gives_the_public_names() -> None:
    scope: dict[str, object] = {}
    exec("from comfy_notebook.testing import *", scope)
    assert set(PUBLIC) <= set(scope)
