"""How conditioning lists combine into one denoiser: the GUIDER semantics of ComfyUI.

:class:`Guidance` describes ComfyUI's guiders (``comfy/samplers.py: CFGGuider`` and
``comfy_extras/nodes_custom_sampler.py: Guider_Basic, Guider_DualCFG``, Comfy-Org 4be318a):

- CFG (``CFGGuider``, KSampler): ``uncond + (cond - uncond) * cfg``; at cfg 1 the negative
  list is not evaluated (unless the sampler needs the unconditional prediction: CFG++).
- basic (``BasicGuider``): the positive list alone (cfg 1, no negative list at all).
- dual (``DualCFGGuider``): three lists.  ``regular``:
  ``neg + (middle - neg) * cfg2 + (pos - middle) * cfg1``, skipping ``neg`` when cfg2 is 1
  and also ``middle`` when cfg1 is 1 too; ``nested``: ``neg + cfg2 * (middle + (pos -
  middle) * cfg1 - neg)``, always all three.  A skipped list predicts zeros, as ComfyUI's
  ``calc_cond_batch`` does for a ``None`` list.

Family-agnostic: it needs only a :class:`~comfy_notebook.sampling.denoisers.ModelDenoiser`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from comfy_notebook.sampling.controls import Control, controls_to_uncond
from comfy_notebook.sampling.denoisers import (
    CFGDenoiser,
    CondEntry,
    ModelDenoiser,
    _add_matching_areas,
    _entry,
    resolve_conditioning,
)
from comfy_notebook.sampling.schedules import SamplingConfigError

__all__ = ["DualCFGDenoiser", "Guidance", "PostCFGDenoiser"]

KwargsFn = Callable[[dict[str, Any]], dict[str, Tensor]]


@dataclass(frozen=True, eq=False)
class Guidance:
    """The conditioning of a sampling run and how it is combined.

    Parameters
    ----------
    positive:
        CONDITIONING of the prompt (``cond1`` of DualCFGGuider).
    negative:
        CONDITIONING subtracted by CFG; ``None`` for BasicGuider (never evaluated).
    middle:
        DualCFGGuider's ``cond2`` (then ``cfg`` is ``cfg_conds`` and ``cfg2`` is
        ``cfg_cond2_negative``); ``None`` otherwise.
    cfg, cfg2:
        Guidance scales.
    nested:
        DualCFGGuider's ``style == "nested"``.
    """

    positive: list[Any]
    negative: list[Any] | None = None
    middle: list[Any] | None = None
    cfg: float = 1.0
    cfg2: float = 1.0
    nested: bool = False
    #: ComfyUI's ``sampler_post_cfg_function`` s (``CFGNorm``, ``CFGZeroStar``), in order: each
    #: ``fn(args) -> denoised`` with ``args`` as :class:`PostCFGDenoiser` builds them
    post_cfg: tuple[Callable[[dict[str, Any]], Tensor], ...] = ()

    @classmethod
    def basic(cls, conditioning: list[Any]) -> Guidance:
        """``BasicGuider``: the conditioning alone."""
        return cls(positive=conditioning)

    @classmethod
    def cfg_guided(cls, positive: list[Any], negative: list[Any], cfg: float) -> Guidance:
        """``CFGGuider`` (and KSampler): classifier-free guidance at scale ``cfg``."""
        return cls(positive=positive, negative=negative, cfg=float(cfg))

    @classmethod
    def dual(cls, cond1: list[Any], cond2: list[Any], negative: list[Any], cfg_conds: float,
             cfg_cond2_negative: float, nested: bool = False) -> Guidance:
        """``DualCFGGuider``: ``cond1`` guided against ``cond2``, ``cond2`` against ``negative``."""
        return cls(positive=cond1, negative=negative, middle=cond2, cfg=float(cfg_conds),
                   cfg2=float(cfg_cond2_negative), nested=nested)

    @property
    def evaluates_negative(self) -> bool:
        """Whether more than the positive list is evaluated per step (memory estimates)."""
        if self.negative is None:
            return False
        if self.middle is None:
            return not math.isclose(self.cfg, 1.0)
        return self.nested or not (math.isclose(self.cfg, 1.0) and math.isclose(self.cfg2, 1.0))

    def denoiser(self, model: ModelDenoiser, *, latent_hw: tuple[int, int], schedule: Any, device: Any = None,
                 dtype: Any = None, kwargs_fn: KwargsFn | None = None, negative_kwargs_fn: KwargsFn | None = None,
                 keep_uncond: bool = False, control_fn: Callable[[Any], Control] | None = None) -> Any:
        """The guided denoiser over ``model`` for a latent of ``latent_hw``.

        ``kwargs_fn`` / ``negative_kwargs_fn`` give the extra model inputs of a positive /
        negative entry (ComfyUI's ``prompt_type``; dual CFG's ``cond2`` counts as negative, as in
        ComfyUI).  ``keep_uncond`` (CFG++ samplers): the result is the ``.guided`` callable
        returning ``(denoised, uncond_denoised)``, and no list is skipped at scale 1.
        ``control_fn`` binds the entries' ControlNet / T2I-Adapter controls for the run.
        """
        neg_fn = kwargs_fn if negative_kwargs_fn is None else negative_kwargs_fn
        if self.middle is None:
            pos, neg = resolve_conditioning(self.positive, self.negative or [], latent_hw, schedule, device, dtype,
                                            kwargs_fn, negative_kwargs_fn=neg_fn, control_fn=control_fn)
            cfg = self.cfg if self.negative is not None else 1.0
            cfg_model = CFGDenoiser(model, pos, neg, cfg, keep_uncond=keep_uncond)
            if self.post_cfg:
                post = PostCFGDenoiser(cfg_model, self.post_cfg)
                return post.guided if keep_uncond else post
            return cfg_model.guided if keep_uncond else cfg_model
        if self.negative is None:
            raise SamplingConfigError(
                "dual CFG guidance needs a negative conditioning; received None. "
                "Fix: connect DualCFGGuider's negative input.")
        lists = resolve_condition_sets([self.positive, self.middle, self.negative], latent_hw, schedule, device,
                                       dtype, [kwargs_fn, neg_fn, neg_fn], control_fn)
        dual = DualCFGDenoiser(model, *lists, cfg1=self.cfg, cfg2=self.cfg2, nested=self.nested,
                               keep_uncond=keep_uncond)
        return dual.guided if keep_uncond else dual


def resolve_condition_sets(lists: list[list[Any]], latent_hw: tuple[int, int], schedule: Any, device: Any = None,
                           dtype: Any = None, kwargs_fns: list[KwargsFn | None] | None = None,
                           control_fn: Callable[[Any], Control] | None = None) -> list[list[CondEntry]]:
    """:func:`~comfy_notebook.sampling.denoisers.resolve_conditioning` for any number of lists.

    ``kwargs_fns[i]`` gives the extra model inputs of list ``i``'s entries.  Each area entry of
    each list gets a same-area counterpart in every other list, in ComfyUI's ``process_conds``
    order (list by list, each against all others).  ``ControlNetApply`` controls of the first
    list also go to the others (ComfyUI applies them to every list but the positive).
    """
    h, w = latent_hw
    fns = kwargs_fns if kwargs_fns is not None else [None] * len(lists)
    lists = [lists[0], *(controls_to_uncond(lists[0], lst) for lst in lists[1:])]
    resolved = [[_entry(c, h, w, schedule, device, dtype, fn, control_fn) for c in lst]
                for lst, fn in zip(lists, fns, strict=True)]
    for i, source in enumerate(resolved):
        for j, target in enumerate(resolved):
            if i != j:
                _add_matching_areas(target, source)
    return resolved


class PostCFGDenoiser:
    """CFG followed by the MODEL's post-CFG functions (ComfyUI's ``sampling_function``: each
    function gets ``denoised`` (the result so far), ``cond_denoised``, ``uncond_denoised`` (zeros
    when the negative list is skipped at cfg 1, as ComfyUI's batch leaves it), ``cond_scale``,
    ``input`` and ``sigma``, and returns the new ``denoised``).  Dual CFG does not run them yet."""

    def __init__(self, cfg_model: CFGDenoiser, functions: tuple[Callable[[dict[str, Any]], Tensor], ...]) -> None:
        self.cfg_model, self.functions = cfg_model, functions

    @property
    def forward_count(self) -> int:
        return self.cfg_model.forward_count

    def guided(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``(denoised, uncond_denoised)`` after the post-CFG functions."""
        cond, uncond = self.cfg_model.predictions(x, sigma)
        cfg = self.cfg_model.cfg
        if uncond is None:
            uncond, denoised = torch.zeros_like(cond), cond
        else:
            denoised = uncond + (cond - uncond) * cfg
        for fn in self.functions:
            denoised = fn({"denoised": denoised, "cond_denoised": cond, "uncond_denoised": uncond,
                           "cond_scale": cfg, "input": x, "sigma": sigma})
        return denoised, uncond

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.guided(x, sigma)[0]


class DualCFGDenoiser:
    """ComfyUI's ``Guider_DualCFG.predict_noise`` over three resolved lists.

    Uses :meth:`CFGDenoiser.combine` (ComfyUI's ``calc_cond_batch``) for the predictions, one
    batched evaluation of the lists that are not skipped.
    """

    def __init__(self, model: ModelDenoiser, positive: list[CondEntry], middle: list[CondEntry],
                 negative: list[CondEntry], *, cfg1: float, cfg2: float, nested: bool = False,
                 keep_uncond: bool = False) -> None:
        self.cfg1, self.cfg2, self.nested = float(cfg1), float(cfg2), nested
        self.positive, self.middle, self.negative = positive, middle, negative
        self._combiner = CFGDenoiser(model, positive, negative, 1.0, fast_path=False)
        skip_neg = not nested and not keep_uncond and math.isclose(self.cfg2, 1.0)
        self.skip_neg = skip_neg
        self.skip_middle = skip_neg and math.isclose(self.cfg1, 1.0)

    @property
    def forward_count(self) -> int:
        """Model calls so far (for tests)."""
        return self._combiner.forward_count

    def _predictions(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(negative, middle, positive) predictions; skipped lists predict zeros."""
        wanted = [(0, self.negative, self.skip_neg), (1, self.middle, self.skip_middle), (2, self.positive, False)]
        active = [(i, lst) for i, lst, skip in wanted if not skip]
        preds = self._combiner.combine([lst for _, lst in active], x, sigma)
        out = [torch.zeros_like(x)] * 3
        for (i, _), p in zip(active, preds, strict=True):
            out[i] = p
        return out[0], out[1], out[2]

    def guided(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """``(denoised, uncond_denoised)``: the uncond of the last CFG applied (``nested``: middle)."""
        neg, mid, pos = self._predictions(x, sigma)
        if self.nested:
            text = mid + (pos - mid) * self.cfg1
            return neg + self.cfg2 * (text - neg), mid
        return neg + (mid - neg) * self.cfg2 + (pos - mid) * self.cfg1, neg

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.guided(x, sigma)[0]
