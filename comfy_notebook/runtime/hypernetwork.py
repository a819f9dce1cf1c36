"""Hypernetworks (the A1111 / ComfyUI format): small MLPs that rewrite the cross-attention key
and value inputs of the UNet.

File format (A1111 ``modules/hypernetworks/hypernetwork.py``, read as ComfyUI's
``comfy_extras/nodes_hypernetwork.py`` ``load_hypernetwork_patch`` does,
comfyanonymous/ComfyUI@00728eb): a ``torch.save`` dict whose integer keys are attention widths
(320, 640, 768, 1024, 1280), each holding two state dicts (key MLP, value MLP) of ``Linear``
layers (``linear.N.weight`` / ``bias``) interleaved, when ``is_layer_norm``, with ``LayerNorm``
layers; plus options ``activation_func`` (linear, relu, leakyrelu, elu, swish = hard-swish,
tanh, sigmoid, softsign, mish), ``is_layer_norm``, ``use_dropout``, ``last_layer_dropout``,
``activate_output``.  Each MLP is built as ComfyUI builds it: after every Linear the activation
(not after the last unless ``activate_output``), then the layer norm, then dropout where the
options put it.

Applied as ComfyUI's ``attn2_patch``: in every cross-attention, with ``k``/``v`` the text
context (width = the context width, so only that width's MLPs ever apply):
``k += strength * mlp_k(k)``, ``v += strength * mlp_v(v)``.  Dropout is inactive at inference
here (ComfyUI leaves its modules in training mode, so its dropout layers draw random masks;
our runs are deterministic).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from comfy_notebook.errors import ModelLoadError, UnsupportedModelError

__all__ = ["ACTIVATIONS", "HypernetworkPatch", "build_mlp", "load_hypernetwork"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
    "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softsign": nn.Softsign,
    "mish": nn.Mish,
}
DROPOUT = 0.3


def build_mlp(weights: Mapping[str, Tensor], options: Mapping[str, Any]) -> nn.Sequential:
    """One key or value MLP from its state dict and the file's options (eval mode)."""
    act = str(options.get("activation_func", "linear"))
    layer_norm = bool(options.get("is_layer_norm", False))
    dropout = bool(options.get("use_dropout", False))
    last_dropout = bool(options.get("last_layer_dropout", False))
    activate_output = bool(options.get("activate_output", False))
    names = [k[:-len(".weight")] for k in weights if k.endswith(".weight")]
    layers: list[nn.Module] = []
    i = 0
    while i < len(names):
        last, penultimate = i == len(names) - 1, i == len(names) - 2
        w, b = weights[names[i] + ".weight"], weights[names[i] + ".bias"]
        linear = nn.Linear(w.shape[1], w.shape[0])
        linear.load_state_dict({"weight": w, "bias": b})
        layers.append(linear)
        if act != "linear" and (not last or activate_output):
            layers.append(ACTIVATIONS[act]())
        if layer_norm:
            i += 1
            if i >= len(names):
                raise ModelLoadError("hypernetwork: is_layer_norm is set but a Linear has no LayerNorm after it. "
                                     "Fix: the file is damaged or not a hypernetwork")
            lw, lb = weights[names[i] + ".weight"], weights[names[i] + ".bias"]
            norm = nn.LayerNorm(lw.shape[0])
            norm.load_state_dict({"weight": lw, "bias": lb})
            layers.append(norm)
        if dropout and not last and (not penultimate or last_dropout):
            layers.append(nn.Dropout(p=DROPOUT))
        i += 1
    return nn.Sequential(*layers).eval().requires_grad_(False)


class HypernetworkPatch:
    """``(k, v) -> (k + s * mlp_k(k), v + s * mlp_v(v))`` for contexts of a width the file covers.

    Unmanaged (``mlps`` given), the MLPs stay with the patch, copied once per device and dtype.
    Managed (``ref``/``manager``: :func:`load_hypernetwork` with a manager), the model manager
    holds them as one module (``"<width>"`` -> [key MLP, value MLP]); :meth:`hold` puts it on the
    device for a sampling run, and the patch holds no weights.
    """

    def __init__(self, mlps: Mapping[int, tuple[nn.Module, nn.Module]], strength: float, name: str = "",
                 *, ref: Any = None, manager: Any = None, widths: tuple[int, ...] = ()) -> None:
        self.mlps = dict(mlps)
        self.strength = float(strength)
        self.name = name
        self.ref, self.manager = ref, manager
        self.widths = tuple(sorted(self.mlps)) or tuple(sorted(widths))
        self._placed: dict[tuple[int, torch.device, torch.dtype], tuple[nn.Module, nn.Module]] = {}
        self._active: Any = None

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the managed MLPs on the compute device (not evictable) for the ``with`` body."""
        if self.ref is None:
            yield
            return
        with self.manager.use(self.ref) as module:
            self._active = module
            try:
                yield
            finally:
                self._active = None

    def _on(self, width: int, like: Tensor) -> tuple[nn.Module, nn.Module] | None:
        if width not in self.widths:
            return None
        if self.ref is not None:
            if self._active is None:
                raise RuntimeError(f"hypernetwork {self.name!r} is used outside HypernetworkPatch.hold()")
            pair = self._active[str(width)]
            return pair[0], pair[1]
        key = (width, like.device, like.dtype)
        if key not in self._placed:  # a few MB: a copy per device and dtype, made once
            k, v = self.mlps[width]
            self._placed[key] = (k.to(like.device, like.dtype), v.to(like.device, like.dtype))
        return self._placed[key]

    def __call__(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        mlps = self._on(k.shape[-1], k)
        if mlps is None:
            return k, v
        w = next(mlps[0].parameters()).dtype  # managed: the policy's dtype, maybe not the input's
        return (k + mlps[0](k.to(w)).to(k.dtype) * self.strength,
                v + mlps[1](v.to(w)).to(v.dtype) * self.strength)

    def __repr__(self) -> str:
        return f"<hypernetwork {self.name!r} widths {list(self.widths)} strength {self.strength}>"


def load_hypernetwork(path: str | os.PathLike[str], strength: float, *, manager: Any = None) -> HypernetworkPatch:
    """Read a hypernetwork file (``.pt``; safe unpickling only) into a patch.

    With ``manager`` the MLPs are registered there as ``hypernetwork:<name>`` (in the policy's
    UNet dtype; reused for the same file, reread after an unload) and the patch holds none.
    """
    source = os.fspath(path)
    name = os.path.splitext(os.path.basename(source))[0]
    if manager is None:
        return HypernetworkPatch(_read(source), strength, name)
    key = f"hypernetwork:{name}"
    dtype = manager.policy.dtype_for("unet")

    def factory() -> nn.Module:
        return nn.ModuleDict({str(w): nn.ModuleList(pair) for w, pair in _read(source).items()}).to(dtype)

    if key in manager:
        ref = manager[key].ref(holder=key)
        widths = tuple(_read(source))  # a few MB, read on the host: the manager's copy stays put
    else:
        module = factory()
        widths = tuple(int(w) for w in module)
        ref = manager.register(key, factory, kind="hypernetwork", source=source, dtype=dtype,
                               module=module).ref(holder=key)
    return HypernetworkPatch({}, strength, name, ref=ref, manager=manager, widths=widths)


def _read(source: str) -> dict[int, tuple[nn.Module, nn.Module]]:
    try:
        sd = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, or a pickle needing code
        raise ModelLoadError(f"cannot read hypernetwork {source}: {exc}. Fix: use an A1111/ComfyUI "
                             "hypernetwork .pt file (saved tensors, numbers and strings only)") from exc
    if not isinstance(sd, Mapping):
        raise UnsupportedModelError(f"{source} is not a hypernetwork (a {type(sd).__name__}, expected a dict)")
    act = sd.get("activation_func", "linear")
    if act not in ACTIVATIONS:
        raise UnsupportedModelError(
            f"{source}: hypernetwork activation {act!r} is not supported (supported: {sorted(ACTIVATIONS)}). "
            "Fix: use a hypernetwork trained with one of these")
    mlps: dict[int, tuple[nn.Module, nn.Module]] = {}
    for key, pair in sd.items():
        try:
            width = int(key)
        except (TypeError, ValueError):
            continue  # options and metadata
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ModelLoadError(f"{source}: width {width} holds {type(pair).__name__}, expected [key MLP, value MLP]")
        mlps[width] = (build_mlp(pair[0], sd), build_mlp(pair[1], sd))
    if not mlps:
        raise UnsupportedModelError(f"{source} holds no hypernetwork layers (no integer width keys). "
                                    "Fix: pick a file from models/hypernetworks")
    return mlps
