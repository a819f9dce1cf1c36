"""Denoisers over a model sampling, and classifier-free guidance over ComfyUI conditioning.

``ModelDenoiser`` turns ``apply_model(x, timestep, context, **kw) -> output`` into
``denoised = D(x, sigma, context)`` through a
:class:`~comfy_notebook.sampling.model_sampling.ModelSampling` (ComfyUI ``model_sampling.py``).  ``CFGDenoiser`` evaluates every conditioning entry of
the positive and negative lists and combines them as ComfyUI's ``calc_cond_batch`` does
(strength / area / mask weighted average, timestep ranges, ControlNet / T2I-Adapter controls),
then applies CFG.  Per step it is tensor arithmetic only, except for entries (and controls)
with a timestep range (one host comparison each).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from comfy_notebook.sampling.controls import Control, controls_to_uncond
from comfy_notebook.sampling.model_sampling import ModelSampling
from comfy_notebook.sampling.schedules import SamplingConfigError

__all__ = ["NOISE_SHAPED", "CFGDenoiser", "CondEntry", "Control", "ModelDenoiser", "resolve_conditioning"]

ApplyModel = Callable[..., Tensor]


class ModelDenoiser:
    """``denoised = model(x, sigma[B], context[B, T, D], **kw)`` through a model sampling.

    Parameters
    ----------
    apply_model:
        ``apply_model(x_in, timestep[B], context, **kw) -> network output``.
    model_sampling:
        A :class:`~comfy_notebook.sampling.model_sampling.ModelSampling`: network input scaling,
        the timestep of each sigma and the denoised estimate from the output.
    """

    def __init__(self, apply_model: ApplyModel, model_sampling: ModelSampling) -> None:
        if not hasattr(model_sampling, "calculate_denoised"):
            raise SamplingConfigError(
                f"ModelDenoiser needs a ModelSampling, received {type(model_sampling).__name__}. "
                "Fix: pass ModelSampling(schedule, 'eps') or a family's model_sampling().")
        self.apply_model, self.model_sampling = apply_model, model_sampling

    def __call__(self, x: Tensor, sigma: Tensor, context: Tensor, c_concat: Tensor | None = None,
                 control: Control | None = None, control_chunks: int = 1, **kw: Any) -> Tensor:
        """``c_concat`` [B, Cc, H, W] (inpainting: mask and masked latent) is appended to the
        scaled input along channels, unscaled, as ComfyUI's ``BaseModel._apply_model`` does.
        ``control`` (see :data:`Control`) sees the scaled input without ``c_concat`` and the
        timestep, as ComfyUI's ``ControlNet.get_control``; ``control_chunks`` entries are batched."""
        ms = self.model_sampling
        x_in = ms.calculate_input(sigma, x)
        t = ms.model_timestep(sigma)  # [B]
        if control is not None:
            residuals = control(x_in, t, sigma, context, control_chunks, kw)
            if residuals is not None:
                kw = {**kw, "control": residuals}
        if c_concat is not None:
            x_in = torch.cat([x_in, c_concat.to(x.dtype)], dim=1)  # [B, C + Cc, H, W]
        out = self.apply_model(x_in, t, context, **kw).to(x.dtype)
        return ms.calculate_denoised(sigma, out, x)


@dataclass(frozen=True)
class CondEntry:
    """One resolved conditioning entry: ``[cond, {strength, area, mask, ...}]`` of ComfyUI.

    ``area`` is (h, w, y, x) in latent pixels; ``mask`` is ``[Bm, H, W]`` at latent size;
    ``sigma_start`` / ``sigma_end`` bound the sigmas where it is active; ``control`` is the
    entry's bound :data:`Control` (entries share a forward only with the same control object).  ``model_kwargs`` are
    extra model inputs with a batch dimension; those named in ``NOISE_SHAPED`` (``c_concat``)
    cover the whole latent [B, Cc, H, W] and are cropped to the entry's area.
    """

    cond: Tensor
    strength: float = 1.0
    area: tuple[int, int, int, int] | None = None
    mask: Tensor | None = None
    sigma_start: float | None = None
    sigma_end: float | None = None
    model_kwargs: dict[str, Tensor] = field(default_factory=dict)
    control: Control | None = None


def _resolve_area(area: Any, h: int, w: int) -> tuple[int, int, int, int]:
    if area[0] == "percentage":
        a = area[1:]
        return (max(1, round(a[0] * h)), max(1, round(a[1] * w)), round(a[2] * h), round(a[3] * w))
    return (int(area[0]), int(area[1]), int(area[2]), int(area[3]))


def _entry(item: Any, h: int, w: int, schedule: ModelSampling, device: Any, dtype: Any,
           kwargs_fn: Callable[[dict[str, Any]], dict[str, Tensor]] | None,
           control_fn: Callable[[Any], Control] | None = None) -> CondEntry:
    if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], dict)):
        raise SamplingConfigError(
            f"conditioning entry must be [cond_tensor, options_dict], received {type(item).__name__}. "
            "Fix: pass ComfyUI CONDITIONING (a list of [tensor [1, T, D], {...}])."
        )
    cond, opts = item
    area = _resolve_area(opts["area"], h, w) if "area" in opts else None
    mask = None
    if "mask" in opts:
        mask = opts["mask"].to(device=device, dtype=torch.float32)
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if tuple(mask.shape[1:]) != (h, w):
            mask = F.interpolate(mask.unsqueeze(1), size=(h, w), mode="bilinear").squeeze(1)
        if opts.get("set_area_to_bounds", False):
            bounds = mask.abs().max(dim=0).values  # [H, W]
            if not bool(bounds.ne(0).any()):
                area = (8, 8, 0, 0)
            else:
                ys, xs = torch.where(bounds != 0)
                y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
                area = (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)
        mask = mask * float(opts.get("mask_strength", 1.0))
    start = schedule.percent_to_sigma(opts["start_percent"]) if "start_percent" in opts else opts.get("timestep_start")
    end = schedule.percent_to_sigma(opts["end_percent"]) if "end_percent" in opts else opts.get("timestep_end")
    extra = kwargs_fn(opts) if kwargs_fn is not None else {}
    control = opts.get("control")
    if control is not None:
        if control_fn is None:
            raise SamplingConfigError(
                "a conditioning entry carries a ControlNet / T2I-Adapter control, but this sampler "
                "was given no way to run it (control_fn). Fix: sample through the KSampler nodes, "
                "or pass control_fn= to resolve_conditioning.")
        control = control_fn(control)
    return CondEntry(cond=cond.to(device=device, dtype=dtype), strength=float(opts.get("strength", 1.0)),
                     area=area, mask=mask, sigma_start=start, sigma_end=end,
                     model_kwargs={k: v.to(device) for k, v in extra.items()}, control=control)


def _area_inside(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether area ``a`` lies inside area ``b`` (both (h, w, y, x))."""
    return a[2] >= b[2] and a[3] >= b[3] and a[0] + a[2] <= b[0] + b[2] and a[1] + a[3] <= b[1] + b[3]


def _add_matching_areas(conds: list[CondEntry], others: list[CondEntry]) -> None:
    """ComfyUI's ``create_cond_with_same_area_if_none``: give ``conds`` an entry for each area of ``others``."""
    for c in others:
        if c.area is None:
            continue
        smallest: CondEntry | None = None
        for e in conds:
            if e.area is not None:
                if _area_inside(c.area, e.area) and (
                    smallest is None or smallest.area is None
                    or math.prod(smallest.area[:2]) > math.prod(e.area[:2])
                ):
                    smallest = e
            elif smallest is None:
                smallest = e
        if smallest is None or smallest.area == c.area:
            continue
        conds.append(CondEntry(cond=smallest.cond, strength=c.strength, area=c.area, mask=c.mask,
                               sigma_start=c.sigma_start, sigma_end=c.sigma_end,
                               model_kwargs=smallest.model_kwargs, control=c.control))


def resolve_conditioning(positive: list[Any], negative: list[Any], latent_hw: tuple[int, int],
                         schedule: ModelSampling, device: Any = None, dtype: Any = None,
                         kwargs_fn: Callable[[dict[str, Any]], dict[str, Tensor]] | None = None,
                         negative_kwargs_fn: Callable[[dict[str, Any]], dict[str, Tensor]] | None = None,
                         control_fn: Callable[[Any], Control] | None = None,
                         ) -> tuple[list[CondEntry], list[CondEntry]]:
    """Resolve ComfyUI CONDITIONING lists into ``CondEntry`` lists for a latent of ``latent_hw``.

    Areas and masks are fixed to the latent size, percent ranges turned into sigmas, and each
    area entry gets a same-area counterpart in the other list (as ComfyUI's ``process_conds``).
    ``kwargs_fn(options) -> {name: tensor}`` adds model inputs (a family's ``y`` vector, ...);
    ``negative_kwargs_fn`` (default: ``kwargs_fn``) does so for the negative list;
    ``control_fn(options["control"]) -> Control`` binds an entry's control for this run (it
    should return the same object for the same control, so entries sharing one batch).
    """
    h, w = latent_hw
    negative = controls_to_uncond(positive, negative)
    pos = [_entry(c, h, w, schedule, device, dtype, kwargs_fn, control_fn) for c in positive]
    neg_fn = kwargs_fn if negative_kwargs_fn is None else negative_kwargs_fn
    neg = [_entry(c, h, w, schedule, device, dtype, neg_fn, control_fn) for c in negative]
    _add_matching_areas(neg, pos)
    _add_matching_areas(pos, neg)
    return pos, neg


def _mult(e: CondEntry, x: Tensor) -> Tensor:
    """Weight map of an entry over its (clipped) area of the full latent ``x``: strength x mask x feathered edges."""
    b, c, h, w = x.shape
    ah, aw, ay, ax = e.area if e.area is not None else (h, w, 0, 0)
    ah, aw = min(h - ay, ah), min(w - ax, aw)
    if e.mask is not None:
        m = e.mask[:b, ay : ay + ah, ax : ax + aw]  # [Bm, ah, aw]
        m = m.unsqueeze(1).repeat(b // m.shape[0], c, 1, 1)
        return m.to(x.dtype) * e.strength
    mult = torch.full((b, c, ah, aw), e.strength, dtype=x.dtype, device=x.device)
    if e.area is not None:  # feather edges that lie inside the latent
        for dim, (size, off, full) in enumerate(((ah, ay, h), (aw, ax, w))):
            rr = min(8, mult.shape[2 + dim] // 4)
            for t in range(rr):
                f = (1.0 / rr) * (t + 1)
                if off != 0:
                    mult.narrow(2 + dim, t, 1).mul_(f)
                if size + off < full:
                    mult.narrow(2 + dim, size - 1 - t, 1).mul_(f)
    return mult


def _simple(e: CondEntry) -> bool:
    """A plain entry: strength 1, no area, no mask, no timestep range."""
    return (e.strength == 1.0 and e.area is None and e.mask is None
            and e.sigma_start is None and e.sigma_end is None)


def _batched(t: Tensor, b: int) -> Tensor:
    """Repeat a conditioning tensor ``[Bc, ...]`` to batch ``b`` (as ComfyUI repeats conds)."""
    if t.shape[0] == b:
        return t
    return t.repeat(b // t.shape[0] or 1, *([1] * (t.ndim - 1)))[:b]


NOISE_SHAPED = frozenset({"c_concat"})  # model kwargs laid out like the latent (ComfyUI CONDNoiseShape)


def _region_kwargs(entries: list[CondEntry], b: int, region: tuple[int, int, int, int]) -> dict[str, Tensor]:
    """Model kwargs of ``entries`` batched in order ([n*B, ...]); noise-shaped ones cropped to ``region``."""
    ah, aw, ay, ax = region
    out = {}
    for k in entries[0].model_kwargs:
        parts = []
        for e in entries:
            v = e.model_kwargs[k]
            if k in NOISE_SHAPED:
                v = v[:, :, ay : ay + ah, ax : ax + aw]  # [B, Cc, ah, aw]
            parts.append(v.expand(b, *v.shape[1:]) if v.shape[0] == 1 else _batched(v, b))
        out[k] = torch.cat(parts)
    return out


def _shape_key(e: CondEntry) -> tuple[Any, ...]:
    """Entries with equal keys can share one batched forward."""
    return (e.area, tuple(e.cond.shape[1:]), tuple((k, tuple(v.shape[1:])) for k, v in e.model_kwargs.items()),
            id(e.control))


@dataclass
class _Group:
    """One batched forward of a plan: entries sharing area and input shapes."""

    region: tuple[int, int, int, int]  # (ah, aw, ay, ax), clipped to the latent
    ctx: Tensor  # [n*B, T, D]
    kwargs: dict[str, Any]  # model kwargs, plus control= / control_chunks= when the group has a control
    targets: list[tuple[int, Tensor]]  # (list index, weight map [B, C, ah, aw]) per entry, in batch order


@dataclass
class _Plan:
    """Everything of ``calc_cond_batch`` that depends only on the active entries and the shape."""

    groups: list[_Group]
    counts: list[Tensor]  # per list: 1e-37 + sum of weight maps, [B, C, H, W]


class CFGDenoiser:
    """Classifier-free guidance over conditioning lists: ``uncond + (cond - uncond) * cfg``.

    ``cfg == 1`` skips the negative entries entirely (one forward per step).  Fast path: when
    each list is one plain entry (strength 1, no area / mask / timestep range) with matching
    shapes, the step is one batched forward over a context concatenated once, then the CFG
    formula (pure tensor arithmetic on fixed shapes).  Otherwise the general path follows
    ComfyUI's ``calc_cond_batch``; its batching, contexts and weight maps are built once per set
    of active entries (entries with a timestep range cost one host comparison per step) and
    reused.  ``fast_path=False`` forces the general path (for tests).  ``forward_count`` counts
    model calls (for tests and benchmarks).

    ``keep_uncond=True`` is for samplers that also need the unconditional prediction (CFG++):
    :meth:`guided` returns ``(denoised, uncond_denoised)``, and ``cfg == 1`` then evaluates the
    negative entries too (ComfyUI's ``disable_cfg1_optimization``).  ``__call__`` is unchanged.
    """

    def __init__(self, model: ModelDenoiser, positive: list[CondEntry], negative: list[CondEntry], cfg: float,
                 fast_path: bool = True, keep_uncond: bool = False) -> None:
        self.model, self.positive, self.negative, self.cfg = model, positive, negative, float(cfg)
        self.keep_uncond = keep_uncond
        self.skip_uncond = math.isclose(self.cfg, 1.0) and not keep_uncond
        self.forward_count = 0
        lists = [positive] if self.skip_uncond else [positive, negative]
        self.fast = fast_path and all(len(lst) == 1 and _simple(lst[0]) for lst in lists) and (
            len({_shape_key(lst[0]) for lst in lists}) == 1)
        self._fast_inputs: dict[tuple[Any, ...], tuple[Tensor, dict[str, Any]]] = {}
        self._plans: dict[tuple[Any, ...], _Plan] = {}

    # fast path ---------------------------------------------------------------------------
    def _fast_ctx(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """Context and model kwargs for the fast path, concatenated once per batch size."""
        b = x.shape[0]
        key = (b, x.device)
        if key not in self._fast_inputs:
            entries = [self.positive[0]] if self.skip_uncond else [self.positive[0], self.negative[0]]
            ctx = torch.cat([_batched(e.cond, b) for e in entries])  # [n*B, T, D]
            kw: dict[str, Any] = _region_kwargs(entries, b, (x.shape[2], x.shape[3], 0, 0))
            if entries[0].control is not None:
                kw |= {"control": entries[0].control, "control_chunks": len(entries)}
            self._fast_inputs[key] = (ctx, kw)
        return self._fast_inputs[key]

    def _fast_call(self, x: Tensor, sigma: Tensor) -> Tensor:
        ctx, kw = self._fast_ctx(x)
        self.forward_count += 1
        if self.skip_uncond:
            return self.model(x, sigma, ctx, **kw)
        pred = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), ctx, **kw)  # [2B, C, H, W]
        cond, uncond = pred.chunk(2)
        return uncond + (cond - uncond) * self.cfg

    # general path ------------------------------------------------------------------------
    def _active(self, entries: list[CondEntry], sigma: Tensor) -> tuple[bool, ...]:
        """Which entries are active at ``sigma`` (host comparisons only for ranged entries)."""
        flags = []
        for e in entries:
            on = True
            if e.sigma_start is not None or e.sigma_end is not None:
                s0 = float(sigma[0])
                on = not ((e.sigma_start is not None and s0 > e.sigma_start)
                          or (e.sigma_end is not None and s0 < e.sigma_end))
            flags.append(on)
        return tuple(flags)

    def _plan(self, entries_per_list: list[list[CondEntry]], active: tuple[tuple[bool, ...], ...], x: Tensor) -> _Plan:
        """Group active entries into batched forwards; precompute contexts, weights and counts."""
        jobs: dict[tuple[Any, ...], list[tuple[int, CondEntry]]] = {}
        for li, (entries, flags) in enumerate(zip(entries_per_list, active, strict=True)):
            for e, on in zip(entries, flags, strict=True):
                if on:
                    jobs.setdefault(_shape_key(e), []).append((li, e))
        b, _, h, w = x.shape
        counts = [torch.ones_like(x) * 1e-37 for _ in entries_per_list]
        groups = []
        for group in jobs.values():
            area = group[0][1].area
            ah, aw, ay, ax = area if area is not None else (h, w, 0, 0)
            ah, aw = min(h - ay, ah), min(w - ax, aw)
            ctx = torch.cat([_batched(e.cond, b) for _, e in group])  # [n*B, T, D]
            kw: dict[str, Any] = _region_kwargs([e for _, e in group], b, (ah, aw, ay, ax))
            if group[0][1].control is not None:
                kw |= {"control": group[0][1].control, "control_chunks": len(group)}
            targets = []
            for li, e in group:
                m = _mult(e, x)  # [B, C, ah, aw]
                counts[li][:, :, ay : ay + ah, ax : ax + aw] += m
                targets.append((li, m))
            groups.append(_Group(region=(ah, aw, ay, ax), ctx=ctx, kwargs=kw, targets=targets))
        return _Plan(groups=groups, counts=counts)

    def combine(self, entries_per_list: list[list[CondEntry]], x: Tensor, sigma: Tensor) -> list[Tensor]:
        """ComfyUI's ``calc_cond_batch``: one weighted-average prediction per list."""
        active = tuple(self._active(entries, sigma) for entries in entries_per_list)
        key = (tuple(id(lst) for lst in entries_per_list), active, tuple(x.shape), x.dtype, x.device)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(entries_per_list, active, x)
        b = x.shape[0]
        outs = [torch.zeros_like(x) for _ in entries_per_list]
        for g in plan.groups:
            ah, aw, ay, ax = g.region
            xin = x[:, :, ay : ay + ah, ax : ax + aw]  # [B, C, ah, aw]
            n = len(g.targets)
            pred = self.model(xin.repeat(n, 1, 1, 1), sigma.repeat(n), g.ctx, **g.kwargs)  # [n*B, C, ah, aw]
            self.forward_count += 1
            for j, (li, m) in enumerate(g.targets):
                outs[li][:, :, ay : ay + ah, ax : ax + aw] += pred[j * b : (j + 1) * b] * m
        return [o / c for o, c in zip(outs, plan.counts, strict=True)]

    def predictions(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(cond_denoised, uncond_denoised)`` before the CFG formula; the second is None when
        the negative entries are skipped (cfg 1)."""
        if self.fast:
            ctx, kw = self._fast_ctx(x)
            self.forward_count += 1
            if self.skip_uncond:
                return self.model(x, sigma, ctx, **kw), None
            cond, uncond = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), ctx, **kw).chunk(2)
            return cond, uncond
        if self.skip_uncond:
            return self.combine([self.positive], x, sigma)[0], None
        cond, uncond = self.combine([self.positive, self.negative], x, sigma)
        return cond, uncond

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self.fast:
            return self._fast_call(x, sigma)
        if self.skip_uncond:
            return self.combine([self.positive], x, sigma)[0]
        cond, uncond = self.combine([self.positive, self.negative], x, sigma)
        return uncond + (cond - uncond) * self.cfg

    def guided(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``(denoised, uncond_denoised)``: the CFG result and the negative list's prediction.

        Parameters
        ----------
        x:
            Noised latent [B, C, H, W].
        sigma:
            Noise level per sample [B].

        Returns
        -------
        tuple of Tensor
            Both [B, C, H, W]; what ComfyUI's ``sampler_post_cfg_function`` receives as
            ``denoised`` and ``uncond_denoised``.
        """
        if self.skip_uncond:
            raise SamplingConfigError(
                "CFGDenoiser.guided needs the unconditional prediction, but this denoiser was built "
                "with cfg == 1 and keep_uncond=False, so it never evaluates the negative entries. "
                "Fix: build it with CFGDenoiser(..., keep_uncond=True).")
        if self.fast:
            ctx, kw = self._fast_ctx(x)
            self.forward_count += 1
            pred = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), ctx, **kw)  # [2B, C, H, W]
            cond, uncond = pred.chunk(2)
        else:
            cond, uncond = self.combine([self.positive, self.negative], x, sigma)
        return uncond + (cond - uncond) * self.cfg, uncond
