"""Controls at sampling time: a CONTROL_NET applied to conditioning, bound to one sampling run.

``ControlNetApply`` / ``ControlNetApplyAdvanced`` put an immutable :class:`AppliedControl`
(the net, the hint image, strength, start/end percent, the control it chains onto) into a
conditioning entry's ``"control"`` option; cached CONDITIONING values stay valid.  When a
KSampler runs, :func:`bind_controls` puts every net the conditioning uses on the compute device
(next to the UNet) and turns each applied control into a :class:`BoundControl`: the callable the
denoiser calls per batched forward (:data:`comfy_notebook.sampling.denoisers.Control`).

Behaviour follows ComfyUI's ``ControlNet.get_control`` / ``T2IAdapter.get_control`` /
``ControlBase.control_merge`` (``comfy/controlnet.py`` at a125cd8): the hint is resized to the
latent's pixel size (``nearest-exact``, centre crop; T2I-Adapters round up to their unshuffle
factor, 1-channel adapters average the colours), at most two prepared sizes are kept, batches are
broadcast per chunk (``broadcast_image_to``), residuals are scaled by strength (global average
pooling for shuffle nets), controls outside their sigma range give only their chain's
residuals, and chained residuals are summed.  T2I-Adapter features do not depend on the
timestep: they are computed once per size and batch.

Transformer ControlNets (``kind == "dit_controlnet"``, Flux's) get the sampled model's residual
slots (its ``control_slots``: double / single blocks); a net whose config has a latent format
takes its hint through the applied VAE at the latent's pixel size, into the model's scale, with
the inpainting mask (or ones) concatenated at latent size, as ComfyUI's ``get_control`` with a
``vae`` and ``extra_concat``.  Residuals shared by several slots are scaled and summed once.
:func:`control_memory` sizes what the controls hold during a step, for the model's reservation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from comfy_notebook.models.unet import ControlResiduals
from comfy_notebook.runtime.control_files import ControlNetValue

__all__ = ["AppliedControl", "BoundControl", "bind_controls", "broadcast_image_to", "control_memory", "resize_hint"]


@dataclass(frozen=True, eq=False)
class AppliedControl:
    """A CONTROL_NET with its hint, as it sits in a conditioning entry (ComfyUI's ``c_net`` copy).

    ``hint`` is the IMAGE moved to channels first, [B, C, H, W] on the host; ``previous`` the
    control it chains onto (residuals are summed); ``vae`` encodes the hint for nets that take a
    latent (InstantX Flux nets), ``extra_concat`` is concatenated to that latent (the AliMama
    inpainting mask, channels first).  Compared by identity: positive and negative
    entries sharing one object are batched together, as ComfyUI batches equal controls.
    """

    net: ControlNetValue
    hint: Tensor = field(repr=False)
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    vae: Any = field(default=None, repr=False)
    previous: AppliedControl | None = None
    extra_concat: tuple[Tensor, ...] = field(default=(), repr=False)  # [B, C, H, W] maps (inpainting mask)

    def chain(self) -> Iterator[AppliedControl]:
        """This control and the ones it chains onto, newest first."""
        c: AppliedControl | None = self
        while c is not None:
            yield c
            c = c.previous


def resize_hint(image: Tensor, width: int, height: int, method: str = "nearest-exact") -> Tensor:
    """ComfyUI ``common_upscale(image, width, height, method, "center")`` for [B, C, H, W]."""
    old_h, old_w = image.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    image = image.narrow(-2, y, old_h - 2 * y).narrow(-1, x, old_w - 2 * x)
    return F.interpolate(image, size=(height, width), mode=method)


def broadcast_image_to(t: Tensor, target: int, chunks: int) -> Tensor:
    """ComfyUI ``broadcast_image_to``: fit a hint batch to ``chunks`` batched entries of ``target // chunks``."""
    n = t.shape[0]
    if n == 1:
        return t
    per = target // chunks
    t = t[:per]
    if per > t.shape[0]:
        t = torch.cat([t] * (per // t.shape[0]) + [t[: per % t.shape[0]]])
    return t if t.shape[0] == target else torch.cat([t] * chunks)


def _merge(current: ControlResiduals, previous: ControlResiduals | None) -> ControlResiduals:
    """ComfyUI ``control_merge``'s chaining: sum entry by entry, keep what only one side has."""
    if previous is None:
        return current

    sums: dict[tuple[int, int], Tensor] = {}  # slots sharing both tensors share their sum

    def seq(a: Any, b: Any) -> tuple[Tensor | None, ...]:
        out = list(a)
        for i, p in enumerate(b):
            if i >= len(out):
                out.append(p)
            elif p is not None:
                if out[i] is None:
                    out[i] = p
                else:
                    key = (id(p), id(out[i]))
                    if key not in sums:
                        sums[key] = p + out[i]
                    out[i] = sums[key]
        return tuple(out)

    middle = seq((current.middle,) if current.middle is not None else (),
                 (previous.middle,) if previous.middle is not None else ())
    return ControlResiduals(input=seq(current.input, previous.input), middle=middle[0] if middle else None,
                            output=seq(current.output, previous.output))


class BoundControl:
    """One applied control (and its chain) during one sampling run; see the module doc."""

    def __init__(self, applied: AppliedControl, module: torch.nn.Module, previous: BoundControl | None,
                 schedule: Any, device: torch.device, slots: tuple[int, int] | None = None) -> None:
        self.applied, self.module, self.previous, self.device = applied, module, previous, device
        self.slots = slots  # a DiT model's residual slots per stream (``control_slots``)
        self.net = applied.net
        self.always = applied.start_percent <= 0.0 and applied.end_percent >= 1.0
        self.sigma_start = schedule.percent_to_sigma(applied.start_percent)
        self.sigma_end = schedule.percent_to_sigma(applied.end_percent)
        self.dtype = next(module.parameters()).dtype
        self._hints: dict[tuple[int, int], Tensor] = {}
        self._features: dict[tuple[Any, ...], ControlResiduals] = {}

    def _hint(self, h: int, w: int) -> Tensor:
        """The hint at the pixel size of an [h, w] latent, on the device (two sizes kept)."""
        hint = self._hints.get((h, w))
        if hint is None and getattr(self.net.config, "latent_format", None) is not None:
            hint = self._latent_hint(h, w)
            while len(self._hints) >= 2:
                self._hints.pop(next(iter(self._hints)))
            self._hints[(h, w)] = hint
        if hint is None:
            ratio = self.net.compression_ratio
            width, height = w * ratio, h * ratio
            if self.net.kind == "t2i_adapter":
                u = self.net.config.unshuffle
                width, height = -(-width // u) * u, -(-height // u) * u
            hint = resize_hint(self.applied.hint.float(), width, height, self.net.upscale_algorithm)
            if self.net.kind == "t2i_adapter" and self.net.config.input_channels == 1 and hint.shape[1] > 1:
                hint = hint.mean(dim=1, keepdim=True)
            hint = hint.to(device=self.device, dtype=self.dtype)
            while len(self._hints) >= 2:
                self._hints.pop(next(iter(self._hints)))
            self._hints[(h, w)] = hint
        return hint

    def _latent_hint(self, h: int, w: int) -> Tensor:
        """ComfyUI's hint for a net with a latent format: the image at the latent's pixel size
        through the VAE, into the model's scale, then the extra maps (mask) at latent size."""
        fmt = self.net.config.latent_format
        vae = self.applied.vae
        if vae is None:
            raise ValueError(
                f"ControlNet {os.path.basename(self.net.source)!r} takes its control image as a latent, "
                "and no VAE was given to encode it. Fix: connect the VAE to the vae input of "
                "ControlNetApplyAdvanced (or use ControlNetInpaintingAliMamaApply)")
        ratio = fmt.downscale
        pixels = resize_hint(self.applied.hint.float(), w * ratio, h * ratio, self.net.upscale_algorithm)
        latent = fmt.process_in(vae.encode(pixels.movedim(1, -1)).float())  # [B, C, h, w] on the host
        extra = list(self.applied.extra_concat)
        if getattr(self.net.config, "concat_mask", False) and not extra:
            extra = [torch.ones(1, 1, 1, 1)]  # no mask given: keep everything (ComfyUI's default)
        maps = []
        for c in extra:
            c = resize_hint(c.float(), latent.shape[-1], latent.shape[-2], self.net.upscale_algorithm)
            maps.append(_repeat_to(c, latent.shape[0]))
        if maps:
            latent = torch.cat([latent, *maps], dim=1)
        return latent.to(device=self.device, dtype=self.dtype)

    def _scale(self, res: ControlResiduals, dtype: torch.dtype | None) -> ControlResiduals:
        s = float(self.applied.strength)
        done: dict[int, Tensor] = {}  # a residual shared by several slots is scaled once

        def one(x: Tensor | None) -> Tensor | None:
            if x is None:
                return None
            got = done.get(id(x))
            if got is not None:
                return got
            done[id(x)] = scaled(x)
            return done[id(x)]

        def scaled(x: Tensor) -> Tensor:
            if self.net.global_average_pooling:
                x = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
            x = x * s
            return x if dtype is None else x.to(dtype)

        return ControlResiduals(input=tuple(one(x) for x in res.input), middle=one(res.middle),
                                output=tuple(one(x) for x in res.output))

    def _own(self, x_in: Tensor, t: Tensor, context: Tensor, chunks: int, kw: dict[str, Tensor]) -> ControlResiduals:
        b, _, h, w = x_in.shape
        hint = self._hint(h, w)
        if hint.shape[0] != b:
            hint = broadcast_image_to(hint, b, chunks)
        if self.net.kind == "t2i_adapter":
            key = (h, w, b, chunks, x_in.dtype)
            feats = self._features.get(key)
            if feats is None:
                feats = self._scale(self.module(hint), x_in.dtype)
                while len(self._features) >= 2:
                    self._features.pop(next(iter(self._features)))
                self._features[key] = feats
            return feats
        if self.net.kind == "dit_controlnet" and self.slots is None:
            raise ValueError(
                f"ControlNet {os.path.basename(self.net.source)!r} is for a transformer (DiT) model, and "
                "the sampled model takes no transformer control residuals. Fix: use a ControlNet "
                "made for the checkpoint's model family")
        want = getattr(self.module, "context_dim", None) or getattr(getattr(self.module, "config", None),
                                                                     "context_dim", None)
        if want is not None and context.shape[-1] != want:  # a static shape check: no host sync
            raise ValueError(
                f"ControlNet {os.path.basename(self.net.source)!r} attends to {want}-wide text, the "
                f"conditioning is {context.shape[-1]} wide. Fix: use a ControlNet made for the "
                "checkpoint's model family")
        y = kw.get("y")
        if self.net.kind == "dit_controlnet":
            g = kw.get("guidance")
            res = self.module(x_in.to(self.dtype), hint, t, context.to(self.dtype),
                              y=None if y is None else y.to(self.dtype), guidance=g,
                              control_type=tuple(self.net.extra_args.get("control_type", ())), slots=self.slots)
            return self._scale(res, None)
        extra = {}
        if getattr(getattr(self.module, "control_config", None), "union_types", None) is not None:
            extra["control_type"] = tuple(self.net.extra_args.get("control_type", ()))
        res = self.module(x_in.to(self.dtype), hint, t.to(self.dtype), context.to(self.dtype),
                          y=None if y is None else y.to(self.dtype), **extra)
        return self._scale(res, None)

    def __call__(self, x_in: Tensor, t: Tensor, sigma: Tensor, context: Tensor, chunks: int,
                 kw: dict[str, Tensor]) -> ControlResiduals | None:
        prev = self.previous(x_in, t, sigma, context, chunks, kw) if self.previous is not None else None
        if not self.always:
            s = float(sigma[0])  # one host comparison per step, only for a limited range
            if s > self.sigma_start or s < self.sigma_end:
                return prev
        return _merge(self._own(x_in, t, context, chunks, kw), prev)


def _repeat_to(t: Tensor, batch: int) -> Tensor:
    """ComfyUI ``repeat_to_batch_size`` along dim 0."""
    n = t.shape[0]
    if n > batch:
        return t[:batch]
    if n < batch:
        return t.repeat(-(-batch // n), *([1] * (t.ndim - 1)))[:batch]
    return t


def _applied(conditioning: list[Any]) -> Iterator[AppliedControl]:
    for item in conditioning:
        opts = item[1] if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], dict) else {}
        control = opts.get("control")
        if isinstance(control, AppliedControl):
            yield from control.chain()


def control_memory(conditionings: Sequence[list[Any]], latent_shape: Sequence[int], *, cfg: bool = True,
                   unet_config: Any = None) -> int:
    """Device bytes the controls of ``conditionings`` hold during a sampling step (0 without any).

    Each applied control's residuals live from its forward until the model's forward ends, beside
    the model's own activations (``Family.unet_memory``), so a budget must hold both: per control
    ``residual_elements`` of its architecture for every image of the batch (doubled with CFG) in
    its dtype, plus its prepared hint.  A control-LoRA is sized on ``unet_config`` (the sampled
    model's layout, whose encoder it copies).
    """
    from comfy_notebook.models.controlnet import ControlNetConfig

    applied = list({id(a): a for c in conditionings for a in _applied(c)}.values())
    if not applied:
        return 0
    b, _, h, w = (int(n) for n in latent_shape[:4])
    batch = b * (2 if cfg else 1)
    total = 0
    for a in applied:
        config = a.net.config
        if config is None and a.net.kind == "control_lora" and hasattr(unet_config, "model_channels"):
            config = ControlNetConfig(unet_config)
        per_image = config.residual_elements(h, w) if hasattr(config, "residual_elements") else 0
        dtype = a.net.ref.base.dtype if a.net.ref is not None and a.net.ref.base.dtype is not None else torch.float32
        elem = torch.empty((), dtype=dtype).element_size()
        ratio = a.net.compression_ratio
        hint = a.hint.shape[1] * h * ratio * w * ratio * max(1, a.hint.shape[0])
        total += (per_image * batch + hint) * elem
    return total


def _key(net: ControlNetValue) -> str:
    return f"control-lora:{net.source}" if net.ref is None else net.ref.base.name


@contextmanager
def bind_controls(conditionings: Sequence[list[Any]], *, schedule: Any, device: Any,
                  unet: torch.nn.Module | None = None, unet_config: Any = None,
                  memory_required: int = 0) -> Iterator[Callable[[Any], BoundControl] | None]:
    """Put the nets the conditioning uses on the device; yield ``bind(applied) -> BoundControl``.

    Yields None when no entry carries a control.  Each net stays in use (not evictable) for the
    ``with`` body; the same applied control always binds to the same object.  Control-LoRAs are
    assembled on ``unet`` (the sampling model, on the device; ``unet_config`` its layout) for
    this run only, as ComfyUI does in ``ControlLora.pre_run``.
    """
    from comfy_notebook.runtime.control_files import build_control_lora

    applied = list({id(a): a for c in conditionings for a in _applied(c)}.values())
    if not applied:
        yield None
        return
    with ExitStack() as stack:
        modules: dict[str, torch.nn.Module] = {}
        for a in applied:
            name = _key(a.net)
            if name in modules:
                continue
            if a.net.ref is None:
                if unet is None:
                    raise TypeError("a control-LoRA needs the sampling model's UNet (bind_controls(unet=...))")
                modules[name] = build_control_lora(a.net.source, unet, unet_config, device)
            else:
                modules[name] = stack.enter_context(a.net.manager.use(a.net.ref, memory_required=memory_required))
        bound: dict[int, BoundControl] = {}
        dev = torch.device(device)
        slots = getattr(unet, "control_slots", None)

        def bind(control: Any) -> BoundControl:
            if not isinstance(control, AppliedControl):
                raise TypeError(f"expected a control applied by ControlNetApply*, received {type(control).__name__}")
            got = bound.get(id(control))
            if got is None:
                prev = bind(control.previous) if control.previous is not None else None
                got = bound[id(control)] = BoundControl(control, modules[_key(control.net)], prev, schedule, dev,
                                                         slots)
            return got

        yield bind
