"""Device policy: which device computes, where offloaded weights live, dtypes per model kind.

Nothing here probes hardware at import time; :meth:`DevicePolicy.auto` probes CUDA when it is
called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from comfy_notebook.errors import ComfyNotebookError

__all__ = ["KINDS", "DevicePolicy", "UnknownModelKindError", "attention_backend"]

KINDS = ("unet", "vae", "clip")


class UnknownModelKindError(ComfyNotebookError, ValueError):
    """A model kind that the policy has no dtype for."""


@dataclass(frozen=True)
class DevicePolicy:
    """Where models compute and where they wait, and the dtype of each model kind.

    Parameters
    ----------
    device:
        The compute device (``cuda:0`` or ``cpu``).
    offload_device:
        Where offloaded weights are kept (always the CPU today).
    dtypes:
        Model kind (``"unet"``, ``"vae"``, ``"clip"``) -> the dtype to build it in, for the
        kinds the user (or a preset) fixes; other kinds take the first dtype their component
        supports that the device runs (see :meth:`dtype_for`).
    pin_memory:
        Keep offloaded weights in one pinned host buffer per model, so that reloads run at
        PCIe speed.  Only meaningful when ``device`` is a CUDA device.
    bf16:
        Whether the device computes in bfloat16 (None: probe CUDA when first asked).
    unet_dtype, vae_dtype, clip_dtype:
        Shorthands for an entry of ``dtypes``.
    """

    device: torch.device
    offload_device: torch.device = torch.device("cpu")  # noqa: RUF009 (immutable)
    dtypes: Mapping[str, torch.dtype] = field(default_factory=dict)
    pin_memory: bool = False
    bf16: bool | None = None
    unet_dtype: torch.dtype | None = None  # shorthands for dtypes={"unet": ...} (and vae, clip)
    vae_dtype: torch.dtype | None = None
    clip_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        object.__setattr__(self, "offload_device", torch.device(self.offload_device))
        merged = dict(self.dtypes)
        for kind in KINDS:
            short = getattr(self, f"{kind}_dtype")
            if short is not None:
                merged[kind] = short
        object.__setattr__(self, "dtypes", merged)
        bad = [k for k in self.dtypes if k not in KINDS]
        if bad:
            raise UnknownModelKindError(f"unknown model kinds {bad} in dtypes; expected {KINDS}")
        object.__setattr__(self, "dtypes", MappingProxyType(dict(self.dtypes)))

    @classmethod
    def cpu(cls) -> DevicePolicy:
        """Everything on the CPU in fp32; load/offload become bookkeeping."""
        return cls(device=torch.device("cpu"))

    @classmethod
    def cuda(cls, index: int = 0, *, pin_memory: bool = True, **dtypes: torch.dtype) -> DevicePolicy:
        """fp16 diffusion models and text encoders on ``cuda:index``; the VAE in its component's
        first supported dtype (bf16 where the GPU has it, else fp32: VAEs overflow in fp16).

        ``unet=``, ``vae=``, ``clip=`` override a kind's dtype.
        """
        chosen = {"unet": torch.float16, "clip": torch.float16, **dtypes}
        return cls(device=torch.device("cuda", index), dtypes=chosen, pin_memory=pin_memory)

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

    def supports(self, dtype: torch.dtype) -> bool:
        """Whether the compute device runs ``dtype`` (CPU: fp32 only, by policy)."""
        if self.device.type == "cpu":
            return dtype == torch.float32
        if dtype == torch.bfloat16:
            if self.bf16 is not None:
                return self.bf16
            return bool(self.is_cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return True

    def dtype_for(self, kind: str, supported: Sequence[torch.dtype] = ()) -> torch.dtype:
        """The dtype a model of ``kind`` ("unet", "vae", "clip") is built in.

        Parameters
        ----------
        kind:
            The model kind.
        supported:
            The component's supported compute dtypes in preference order (a family fact, e.g.
            bf16 then fp32 for a VAE); empty: any.

        Returns
        -------
        torch.dtype
            The policy's dtype for the kind when set and supported; else the first supported
            dtype the device runs; else fp32.
        """
        if kind not in KINDS:
            raise UnknownModelKindError(
                f"unknown model kind {kind!r}; expected one of {KINDS}. "
                "Fix: pass kind='unet', 'vae' or 'clip', or give dtype= explicitly."
            )
        chosen = self.dtypes.get(kind)
        if chosen is not None and (not supported or chosen in supported):
            return chosen
        for dtype in supported:
            if self.supports(dtype):
                return dtype
        return torch.float32


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
