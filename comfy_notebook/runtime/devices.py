"""Device policy: which device computes, where offloaded weights live, dtypes per model kind.

Nothing here probes hardware at import time; :meth:`DevicePolicy.auto` probes CUDA when it is
called.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from comfy_notebook.errors import ComfyNotebookError

__all__ = ["KINDS", "DevicePolicy", "UnknownModelKindError", "attention_backend"]

KINDS = ("unet", "vae", "clip")


class UnknownModelKindError(ComfyNotebookError, ValueError):
    """A model kind that the policy has no dtype for."""


@dataclass(frozen=True)
class DevicePolicy:
    """Where models compute and where they wait.

    Parameters
    ----------
    device:
        The compute device (``cuda:0`` or ``cpu``).
    offload_device:
        Where offloaded weights are kept (always the CPU today).
    unet_dtype, vae_dtype, clip_dtype:
        The dtype each model kind is built in.
    pin_memory:
        Keep offloaded weights in one pinned host buffer per model, so that reloads run at
        PCIe speed.  Only meaningful when ``device`` is a CUDA device.
    """

    device: torch.device
    offload_device: torch.device = torch.device("cpu")  # noqa: RUF009 (immutable)
    unet_dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32
    clip_dtype: torch.dtype = torch.float32
    pin_memory: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        object.__setattr__(self, "offload_device", torch.device(self.offload_device))

    @classmethod
    def cpu(cls) -> DevicePolicy:
        """Everything on the CPU in fp32; load/offload become bookkeeping."""
        return cls(device=torch.device("cpu"))

    @classmethod
    def cuda(cls, index: int = 0, *, pin_memory: bool = True) -> DevicePolicy:
        """fp16 UNet and CLIP on ``cuda:index``; bf16 VAE where the device has bf16, else fp32.

        SD1 VAEs overflow in fp16; bf16 has fp32's range and decodes about twice as fast, and
        the VAE value reruns a decode in fp32 if the result is not finite (runtime.precision).
        """
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return cls(
            device=torch.device("cuda", index),
            unet_dtype=torch.float16,
            vae_dtype=torch.bfloat16 if bf16 else torch.float32,
            clip_dtype=torch.float16,
            pin_memory=pin_memory,
        )

    @classmethod
    def auto(cls) -> DevicePolicy:
        """CUDA device 0 when one is present (probed now, not at import), else the CPU."""
        if torch.cuda.is_available():
            return cls.cuda(0)
        return cls.cpu()

    @property
    def is_cuda(self) -> bool:
        """True when the compute device is a CUDA device."""
        return self.device.type == "cuda"

    def dtype_for(self, kind: str) -> torch.dtype:
        """The dtype models of ``kind`` ("unet", "vae", "clip") are built in."""
        if kind not in KINDS:
            raise UnknownModelKindError(
                f"unknown model kind {kind!r}; expected one of {KINDS}. "
                "Fix: pass kind='unet', 'vae' or 'clip', or give dtype= explicitly."
            )
        return {"unet": self.unet_dtype, "vae": self.vae_dtype, "clip": self.clip_dtype}[kind]


def attention_backend(device: torch.device | str, dtype: torch.dtype = torch.float16,
                      head_dim: int = 64, tokens: int = 4096) -> str:
    """The SDPA kernel PyTorch picks on ``device`` for heads of ``head_dim`` (for reports).

    Asks ``torch._fused_sdp_choice`` (what ``scaled_dot_product_attention`` dispatches on) with
    SD-sized self-attention inputs; "math" on the CPU or when the query is not available.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return "math (cpu: flash/memory-efficient kernels are CUDA-only)" if device.type == "cpu" else "math"
    q = torch.empty(2, 8, tokens, head_dim, device=device, dtype=dtype)
    try:
        choice = torch._fused_sdp_choice(q, q, q)  # type: ignore[attr-defined]
        names = {int(v): k.lower() for k, v in torch.nn.attention.SDPBackend.__members__.items()}
        name = names.get(int(choice), str(choice))
    except (AttributeError, RuntimeError, TypeError) as exc:
        name = f"unknown ({type(exc).__name__})"
    flags = [n for n, on in (("flash", torch.backends.cuda.flash_sdp_enabled()),
                             ("mem_efficient", torch.backends.cuda.mem_efficient_sdp_enabled()),
                             ("cudnn", torch.backends.cuda.cudnn_sdp_enabled()),
                             ("math", torch.backends.cuda.math_sdp_enabled())) if on]
    return f"{name} (enabled: {', '.join(flags)})"
