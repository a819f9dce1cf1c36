"""fp8 weights: linear layers that keep fp8 storage and compute in a wider dtype.

ComfyUI's behaviour (``comfy/ops.py`` ``manual_cast`` / ``fp8_ops`` and ``comfy/sd.py``
``load_diffusion_model`` at a125cd8): with ``weight_dtype`` fp8_e4m3fn / fp8_e5m2 (or an fp8
file under "default") the weights stay fp8 in memory and each layer casts its weight to the
compute dtype (bf16 or fp16) when it runs, so only one layer's weight is ever upcast.
``fp8_e4m3fn_fast`` additionally runs the matrix product itself in fp8 on GPUs that have fp8
tensor cores (``torch._scaled_mm``, compute capability 8.9 and up): the input is clamped to
e4m3's range (+-448) and cast to fp8 with scale 1; elsewhere it falls back to the cast path.

"Scaled fp8" files (ComfyUI's ``scaled_fp8`` marker key, ``comfy/model_detection.py`` and
``comfy/ops.py scaled_fp8_ops`` at a125cd8) store each linear weight as ``w / scale_weight`` in fp8
with a float32 ``scale_weight`` per layer (and optionally ``scale_input``): :class:`ScaledFP8Linear`
keeps the fp8 weight and applies the scale per call -- to the weight when the weight is the
smaller tensor, else to the input, as ComfyUI -- and, with the fp8 matmul
(:func:`scaled_linear_factory` ``fast``: ComfyUI does this on fp8-capable GPUs unless the marker
has two elements), passes both scales to ``torch._scaled_mm``.

The layer is chosen at the call site: the loader passes :func:`linear_factory` 's result to
the model's constructor (``Flux(config, linear=...)``); nothing is patched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FP8_DTYPES",
    "WEIGHT_DTYPES",
    "CastLinear",
    "FP8MatmulLinear",
    "ScaledFP8Linear",
    "fp8_matmul_supported",
    "is_fp8",
    "linear_factory",
    "scaled_linear_factory",
    "storage_dtype",
]

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# ComfyUI's UNETLoader weight_dtype choices -> the storage dtype they ask for (None: the file's).
WEIGHT_DTYPES: dict[str, torch.dtype | None] = {
    "default": None,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
_E4M3_MAX = 448.0


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES


class CastLinear(nn.Linear):
    """``nn.Linear`` whose stored weight and bias (e.g. fp8) are cast to the input's dtype per call."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        b = self.bias
        if b is not None and b.dtype != x.dtype:
            b = b.to(x.dtype)
        return F.linear(x, w, b)


class FP8MatmulLinear(CastLinear):
    """Linear that multiplies in fp8 (``torch._scaled_mm``) when its weight is e4m3fn.

    Falls back to :class:`CastLinear` on devices without fp8 matmul (decided per call from the
    input's device: models are built on the host and moved later), for other weight dtypes and
    for shapes ``_scaled_mm`` does not take (dimensions not multiples of 16).  The output is in
    the input's dtype.  ``allow_cpu`` (tests) runs ``_scaled_mm`` on the CPU too.
    """

    allow_cpu = False

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if (w.dtype != torch.float8_e4m3fn or x.dtype not in (torch.bfloat16, torch.float16, torch.float32)
                or self.in_features % 16 or self.out_features % 16
                or not (fp8_matmul_supported(x.device) or (self.allow_cpu and x.device.type == "cpu"))):
            return super().forward(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        a = x2.clamp(-_E4M3_MAX, _E4M3_MAX).to(torch.float8_e4m3fn)  # [N, in]
        one = torch.ones((), device=x.device, dtype=torch.float32)
        out_dtype = torch.bfloat16 if x.dtype == torch.float32 else x.dtype
        b = None if self.bias is None else self.bias.to(out_dtype)
        y = torch._scaled_mm(a, w.t(), scale_a=one, scale_b=one, bias=b, out_dtype=out_dtype)
        return y.to(x.dtype).reshape(*lead, self.out_features)


_FP8_MM: dict[tuple[str, int | None], bool] = {}


def fp8_matmul_supported(device: torch.device | str) -> bool:
    """Whether ``device`` has fp8 matrix units (CUDA compute capability >= 8.9); cached, no sync."""
    dev = torch.device(device)
    key = (dev.type, dev.index)
    if key not in _FP8_MM:
        ok = dev.type == "cuda" and torch.cuda.is_available()
        _FP8_MM[key] = ok and torch.cuda.get_device_capability(dev) >= (8, 9)
    return _FP8_MM[key]


def storage_dtype(weight_dtype: str, file_dtype: torch.dtype, compute_dtype: torch.dtype) -> torch.dtype:
    """The dtype weights are kept in: the requested fp8 type, else an fp8 file's own, else compute."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {sorted(WEIGHT_DTYPES)}, received {weight_dtype!r}")
    asked = WEIGHT_DTYPES[weight_dtype]
    if asked is not None:
        return asked
    return file_dtype if is_fp8(file_dtype) else compute_dtype


def linear_factory(storage: torch.dtype, compute: torch.dtype, *, fast: bool = False,
                   device: torch.device | str = "cpu") -> Callable[..., nn.Module]:
    """The linear layer class for weights stored in ``storage`` and run in ``compute``.

    ``nn.Linear`` when the two agree; :class:`FP8MatmulLinear` for ``fast`` e4m3fn (fp8 matmul
    where the input's device has it, the cast path elsewhere); :class:`CastLinear` otherwise.
    ``device`` is kept for callers that know where the model will run (unused).
    """
    if storage == compute:
        return nn.Linear
    if fast and storage == torch.float8_e4m3fn:
        return FP8MatmulLinear  # decides per call whether the input's device has fp8 matmul
    return CastLinear


class ScaledFP8Linear(CastLinear):
    """Linear with an fp8 weight stored divided by a float32 ``scale_weight`` (ComfyUI's scaled fp8).

    ``scale_weight`` and ``scale_input`` are float32 0-d buffers (ones unless the file has them).
    """

    fp8_mm = False  # the class from scaled_linear_factory(fast=True) sets it
    allow_cpu = False  # tests: run torch._scaled_mm on the CPU too

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.register_buffer("scale_weight", torch.ones((), device=device, dtype=torch.float32))
        self.register_buffer("scale_input", torch.ones((), device=device, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        if (self.fp8_mm and self.weight.dtype == torch.float8_e4m3fn
                and x.dtype in (torch.bfloat16, torch.float16) and not self.in_features % 16
                and not self.out_features % 16
                and (fp8_matmul_supported(x.device) or (self.allow_cpu and x.device.type == "cpu"))):
            return self._fp8_forward(x)
        w = self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        scale = self.scale_weight.to(device=w.device, dtype=w.dtype)
        if w.numel() < x.numel():
            return F.linear(x, w * scale, b)
        return F.linear(x * scale, w, b)

    def _fp8_forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        s_in = self.scale_input.to(x.device)
        a = (x * (1.0 / s_in).to(x.dtype)).reshape(-1, self.in_features).to(torch.float8_e4m3fn).contiguous()
        b = None if self.bias is None else self.bias.to(x.dtype)
        y = torch._scaled_mm(a, self.weight.t(), scale_a=s_in, scale_b=self.scale_weight.to(x.device), bias=b,
                             out_dtype=x.dtype)
        return y.reshape(*lead, self.out_features)


def scaled_linear_factory(*, fast: bool = False) -> Callable[..., nn.Module]:
    """:class:`ScaledFP8Linear`, or a subclass that uses the fp8 matmul where it can (``fast``)."""
    if not fast:
        return ScaledFP8Linear
    return type("ScaledFP8MatmulLinear", (ScaledFP8Linear,), {"fp8_mm": True})


def describe(model: nn.Module) -> dict[str, Any]:
    """Bytes per dtype of a model's parameters (for reports and the manager's accounting)."""
    out: dict[str, Any] = {}
    for p in model.parameters():
        key = str(p.dtype).replace("torch.", "")
        out[key] = out.get(key, 0) + p.numel() * p.element_size()
    return out
