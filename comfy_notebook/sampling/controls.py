"""ControlNet / T2I-Adapter controls as the sampler sees them: an opaque callable per entry.

The sampler never runs a control net itself; the caller binds each conditioning entry's
``"control"`` option to a :data:`Control` for the run (``runtime.control_run`` does), and the
denoiser calls it per batched forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

__all__ = ["Control", "controls_to_uncond"]

# A conditioning entry's control, bound for one sampling run:
# ``control(x_in, timestep, sigma, context, chunks, model_kwargs) -> residuals | None``, where
# ``x_in`` is the scaled model input [n*B, C, h, w] of ``chunks`` batched entries.  The
# residuals (or None when inactive at ``sigma``) are passed to ``apply_model`` as ``control=``.
Control = Callable[[Tensor, Tensor, Tensor, Tensor, int, dict[str, Tensor]], Any]


def controls_to_uncond(positive: list[Any], negative: list[Any]) -> list[Any]:
    """ComfyUI's ``apply_empty_x_to_equal_area`` for controls (``samplers.py`` at a125cd8).

    Controls of positive entries marked ``control_apply_to_uncond`` (``ControlNetApply``) go to
    the negative entries without area when no negative entry has a control of its own; with
    more controls than such entries they are dealt round-robin and the last one wins.
    """
    def plain(item: Any) -> bool:
        return isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], dict) and (
            "area" not in item[1])

    cond_cnets = [item[1]["control"] for item in positive if plain(item)
                  and item[1].get("control_apply_to_uncond", False) and item[1].get("control") is not None]
    if not cond_cnets or any(plain(i) and i[1].get("control") is not None for i in negative):
        return negative
    others = [j for j, item in enumerate(negative) if plain(item)]
    if not others:
        return negative
    out = list(negative)
    for n, control in enumerate(cond_cnets):
        j = others[n % len(others)]
        out[j] = [negative[j][0], {**negative[j][1], "control": control}]
    return out
