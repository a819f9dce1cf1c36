"""Device policy: which device computes, where offloaded weights live, dtypes per model kind.

Nothing here probes hardware at import time; :meth:`DevicePolicy.auto` probes CUDA when it is
called.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from comfy_notebook.errors import ComfyNotebookError

__all__ = ["KINDS", "DevicePolicy", "UnknownModelKindError"]

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
        """fp16 UNet and CLIP, fp32 VAE (SD1 VAEs overflow in fp16) on ``cuda:index``."""
        return cls(
            device=torch.device("cuda", index),
            unet_dtype=torch.float16,
            vae_dtype=torch.float32,
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
