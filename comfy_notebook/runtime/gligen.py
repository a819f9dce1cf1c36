"""GLIGEN values and their use while sampling.

``GLIGENLoader`` gives a :class:`GligenValue`; ``GLIGENTextBoxApply`` stores
``("position", gligen, [(phrase_embedding, h, w, y, x), ...])`` (sizes in latent pixels) under
the ``gligen`` key of each conditioning entry, as ComfyUI does.  While sampling, an entry with
that key gets the object tokens of its boxes as an extra model input (``gligen_objs``), so it
runs in its own forward, and that forward inserts the fusers after each transformer block's
self-attention (ComfyUI ``Gligen.set_position`` as a ``middle_patch``, comfy/gligen.py and
comfy/samplers.py at comfyanonymous/ComfyUI@00728eb).  Entries without it run the plain UNet.

The GLIGEN weights (about 200 M parameters in the released text-box model) are held by the
model manager (``gligen:<name>``, in the UNet dtype of the device policy) when the loader gives
one: they are put on the device beside the UNet for a sampling run (:meth:`GligenValue.hold`),
counted in budgets, offloaded and unloaded like any model.  A value made without a manager keeps
its weights in float32 on the host, with one copy per device and dtype made on first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from comfy_notebook.errors import ModelLoadError, NodeError, UnsupportedModelError

__all__ = ["GligenValue", "gligen_for_sampling", "load_gligen_value"]


@dataclass(eq=False)
class GligenValue:
    """A GLIGEN: the position net and the fusers, keyed by transformer-block path."""

    model: Any  # models.gligen.GLIGEN (unmanaged), or its structure on meta (managed)
    name: str = ""
    ref: Any = None  # runtime.patches.ModelRef when the model manager holds the weights
    manager: Any = field(default=None, repr=False)
    _placed: dict[tuple[torch.device, torch.dtype], Any] = field(default_factory=dict, repr=False)
    _where: dict[int, dict[int, int]] = field(default_factory=dict, repr=False)
    _active: Any = field(default=None, repr=False)

    @contextmanager
    def hold(self) -> Any:
        """Keep the managed weights on the compute device (not evictable) for the ``with`` body."""
        if self.ref is None:
            yield
            return
        with self.manager.use(self.ref) as module:
            self._active = module
            try:
                yield
            finally:
                self._active = None

    def on(self, device: Any, dtype: torch.dtype) -> Any:
        """The model on ``device`` in ``dtype`` (cached); managed: the held module, in its own dtype."""
        if self.ref is not None:
            if self._active is None:
                raise RuntimeError(f"GLIGEN {self.name!r} is used outside GligenValue.hold()")
            return self._active
        key = (torch.device(device), dtype)
        if key not in self._placed:
            self._placed[key] = self.model if key == (torch.device("cpu"), torch.float32) else \
                self.model.to(device=key[0], dtype=dtype)
        return self._placed[key]

    def objects(self, params: Sequence[Any], latent_shape: Sequence[int], device: Any) -> Tensor:
        """Object tokens ``[1, 30, D]`` of ``(phrase, h, w, y, x)`` boxes on a latent of ``latent_shape``."""
        h, w = int(latent_shape[-2]), int(latent_shape[-1])
        boxes = [(p[4] / w, p[3] / h, (p[4] + p[2]) / w, (p[3] + p[1]) / h) for p in params]
        with torch.inference_mode(), (self.hold() if self._active is None else nullcontext()):
            return self.on(device, torch.float32).objects([p[0] for p in params], boxes, 1)  # type: ignore[no-any-return]

    def patch(self, unet: nn.Module, objs: Tensor) -> Callable[[Tensor, nn.Module], Tensor]:
        """The middle patch for ``unet``: the fuser of each block with a GLIGEN fuser, else nothing."""
        from comfy_notebook.models.layers import BasicTransformerBlock

        where = self._where.get(id(unet))
        if where is None:  # block -> fuser, by the block's path (once per UNet module)
            index = {b: i for i, b in enumerate(self.model.blocks)}
            where = self._where[id(unet)] = {id(m): index[name] for name, m in unet.named_modules()
                                             if isinstance(m, BasicTransformerBlock) and name in index}
        if not where:
            raise NodeError("the GLIGEN model fits no transformer block of this UNet",
                            expected=f"a UNet with blocks {self.model.blocks[:3]}...",
                            received="a UNet with other block names",
                            fix="use a GLIGEN made for this checkpoint's model family")

        def apply(x: Tensor, block: nn.Module) -> Tensor:
            i = where.get(id(block))
            if i is None:
                return x
            model = self.on(x.device, x.dtype)
            wdtype = model.position_net.null_positive_feature.dtype  # managed: the policy's, maybe not x's
            return model.fusers[i](x.to(wdtype), objs.to(wdtype)).to(x.dtype)  # type: ignore[no-any-return]

        return apply

    def __repr__(self) -> str:
        return f"<GLIGEN {self.name!r}: {len(self.model.fusers)} fusers, phrases {self.model.key_dim} wide>"


def load_gligen_value(path: str | os.PathLike[str], *, name: str | None = None, manager: Any = None) -> GligenValue:
    """``GLIGENLoader``: read a GLIGEN file (ComfyUI's ``models/gligen`` layout).

    With ``manager`` the weights are registered there as ``gligen:<name>`` (reused when the same
    name is loaded again; reread from the file after an unload) and the value holds none."""
    source = os.fspath(path)
    label = name or os.path.splitext(os.path.basename(source))[0]
    if manager is None:
        return GligenValue(_read_gligen(source), label)
    key = f"gligen:{label}"
    skeleton = _read_gligen(source, structure_only=True)  # built on meta: the structure, no weights
    dtype = manager.policy.dtype_for("unet")
    if key in manager:
        ref = manager[key].ref(holder=key)
    else:
        def factory() -> nn.Module:
            return _read_gligen(source).to(dtype)

        ref = manager.register(key, factory, kind="gligen", source=source, dtype=dtype,
                               module=factory()).ref(holder=key)
    return GligenValue(skeleton, label, ref=ref, manager=manager)


def _read_gligen(source: str, structure_only: bool = False) -> Any:
    from comfy_notebook.models.gligen import GLIGEN
    from comfy_notebook.runtime.loading import open_state_dict

    sd = open_state_dict(source)
    try:
        in_dim, out_dim, fusers, names = GLIGEN.layout(sd)
    except KeyError:
        raise UnsupportedModelError(
            f"{source} holds no GLIGEN model (expected position_net.* and *.transformer_blocks.N.fuser.* keys). "
            "Fix: choose a file from models/gligen (e.g. gligen_sd14_textbox_pruned.safetensors)") from None
    with torch.device("meta"):
        model = GLIGEN(in_dim, out_dim, fusers)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(names))
    if missing:
        raise ModelLoadError(f"{source}: {len(missing)} GLIGEN weights missing, e.g. {missing[:3]}. "
                             "Fix: the file is incomplete")
    if structure_only:
        return model
    model.load_state_dict({k: sd[names[k]].float().contiguous() for k in expected}, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _gligen_entries(conds: Sequence[Any]) -> list[GligenValue]:
    found = []
    for _, opts in conds:
        g = opts.get("gligen") if isinstance(opts, dict) else None
        if g is not None and g[0] == "position" and all(g[1] is not f for f in found):
            found.append(g[1])
    return found


def gligen_for_sampling(positive: Sequence[Any], negative: Sequence[Any],
                        inputs: Callable[[dict[str, Any]], dict[str, Tensor]] | None,
                        ) -> tuple[Callable[[dict[str, Any]], dict[str, Tensor]] | None, Any]:
    """``(model inputs with gligen_objs, context manager factory(unet, kwargs))``; ``(inputs, None)``
    when no entry carries a GLIGEN box.  The factory's ``hold()`` keeps a managed GLIGEN's weights
    on the device for the sampling run (enter it around the whole run)."""
    found = _gligen_entries(list(positive) + list(negative))
    if not found:
        return inputs, None
    if len(found) > 1:
        raise NodeError("conditioning entries carry two different GLIGEN models", input_name="positive",
                        expected="boxes from one GLIGENLoader", received=f"{len(found)} GLIGEN models",
                        fix="load the GLIGEN file once and use that output for every GLIGENTextBoxApply")
    gligen = found[0]

    def with_objects(params: dict[str, Any]) -> dict[str, Tensor]:
        out = dict(inputs(params)) if inputs is not None else {}
        g = params.get("gligen")
        if g is not None and g[0] == "position":
            out["gligen_objs"] = gligen.objects(g[2], tuple(params["noise"].shape), params["device"])
        return out

    class Active:
        """``active(unet, kwargs)``: the fusers around one forward; ``hold()``: the weights on the
        device for the whole run."""

        hold = gligen.hold

        def __call__(self, unet: nn.Module, kwargs: dict[str, Any]) -> Any:
            return active(unet, kwargs)

    @contextmanager
    def active(unet: nn.Module, kwargs: dict[str, Any]) -> Any:
        from comfy_notebook.models.layers import MIDDLE_PATCHES

        objs = kwargs.pop("gligen_objs", None)
        if objs is None:
            yield
            return
        token = MIDDLE_PATCHES.set((gligen.patch(unet, objs),))
        try:
            yield
        finally:
            MIDDLE_PATCHES.reset(token)

    return with_objects, Active()
