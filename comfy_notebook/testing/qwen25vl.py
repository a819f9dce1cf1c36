"""Random-weight Qwen2.5-VL text-encoder files in ComfyUI's layout (re-exported by ``comfy_notebook.testing``).

``text_encoders/qwen_2.5_vl_7b.safetensors`` holds the language model under ``model.`` and the
vision tower under ``visual.`` (Hugging Face names).  The tiny preset keeps that structure, the
real Qwen2.5-VL vocabulary (so the shipped tokenizer's ids, the image pad among them, index the
embedding) and a width equal to the tiny Qwen-Image transformer's context width (48).
"""

from __future__ import annotations

import dataclasses
import os

import torch

from comfy_notebook.models.qwen25vl import Qwen25VLConfig, Qwen25VLEncoder
from comfy_notebook.models.qwen25vl_vision import VisionConfig

__all__ = ["QWEN25VL_TINY", "make_qwen25vl_file"]

#: 2 layers, 48 wide (3 query heads of 16, 1 key/value head), the real 152064-token vocabulary,
#: a 4-block vision tower 64 wide whose merger outputs 48
QWEN25VL_TINY = Qwen25VLConfig(
    vocab_size=152064, hidden_size=48, num_layers=2, num_heads=3, num_kv_heads=1, head_dim=16,
    intermediate_size=96, mrope_section=(2, 3, 3),
    vision=dataclasses.replace(VisionConfig.tiny(), out_hidden_size=48))


def make_qwen25vl_file(path: str | os.PathLike[str], seed: int = 0, *, dtype: torch.dtype = torch.bfloat16,
                       config: Qwen25VLConfig | None = None, vision: bool = True) -> str:
    """Write a random-weight Qwen2.5-VL file (``text_encoders/qwen_2.5_vl_7b*`` layout). Returns the path.

    ``vision=False`` leaves the ``visual.`` keys out (a text-only file).
    """
    from safetensors.torch import save_file

    from comfy_notebook.testing._core import random_state_dict

    config = config or QWEN25VL_TINY
    with torch.device("meta"):
        module = Qwen25VLEncoder(config if vision else config.without_vision())
    sd = random_state_dict(module, seed, torch.float32, "qwen25vl")
    gen = torch.Generator().manual_seed(seed)
    for k in sd:  # RMS norm weights near 1
        if k.endswith(("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight")):
            sd[k] = 1.0 + 0.1 * torch.randn(sd[k].shape, generator=gen)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in sd.items()}, str(path))
    return str(path)
