"""Partial (low-VRAM) loading: weights that do not fit stay on the host and are streamed.

A *unit* is a module with parameters of its own (a Linear, a Conv2d, a norm).  The manager puts
the largest units that fit the budget on the device; every other unit gets a forward pre-hook
that copies (and casts, and patches) its weights onto the device just before it runs, and a
forward hook that drops them afterwards.  Hooks are torch's documented extension point; the
model classes are not changed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from comfy_notebook.runtime.patches import Patch, apply_patches

__all__ = ["Streamer", "Unit", "find_units", "set_param"]


@dataclass(frozen=True)
class Unit:
    """A module owning parameters: ``params`` pairs the local name with the model-wide key."""

    prefix: str
    module: nn.Module
    params: tuple[tuple[str, str], ...]  # (local name, canonical key)
    nbytes: int


def find_units(root: nn.Module) -> list[Unit]:
    """Every module with parameters of its own; shared parameters keep their first name."""
    canonical: dict[int, str] = {}
    units = []
    for prefix, module in root.named_modules(remove_duplicate=False):
        params = []
        nbytes = 0
        for local, p in module._parameters.items():
            if p is None:
                continue
            key = f"{prefix}.{local}" if prefix else local
            first = canonical.setdefault(id(p), key)
            params.append((local, first))
            if first == key:
                nbytes += p.numel() * p.element_size()
        if params:
            units.append(Unit(prefix, module, tuple(params), nbytes))
    return units


def set_param(module: nn.Module, local: str, tensor: Tensor) -> None:
    """Point ``module.<local>`` at ``tensor`` (an inference-only Parameter sharing its storage)."""
    module._parameters[local] = nn.Parameter(tensor, requires_grad=False)


class Streamer:
    """Forward hooks that stream the weights of ``units`` to ``device`` while each one runs."""

    def __init__(
        self,
        units: Sequence[Unit],
        master: Mapping[str, Tensor],
        device: torch.device,
        dtype: torch.dtype | None,
        on_transfer: Callable[[int, float], None],
    ) -> None:
        self.units = list(units)
        self.master = master
        self.device = device
        self.dtype = dtype
        self.patches: Mapping[str, tuple[Patch, ...]] = {}
        self.on_transfer = on_transfer
        self.transfers = 0  # per-unit uploads since install
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def install(self) -> None:
        """Register the pre/post forward hooks on every streamed unit."""
        for unit in self.units:
            self._handles.append(unit.module.register_forward_pre_hook(self._pre(unit)))
            self._handles.append(unit.module.register_forward_hook(self._post(unit)))

    def remove(self) -> None:
        """Remove the hooks and point every streamed unit back at its host weights."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for unit in self.units:
            for local, key in unit.params:
                set_param(unit.module, local, self.master[key])

    def _pre(self, unit: Unit) -> Callable[..., None]:
        def hook(module: nn.Module, args: object) -> None:
            t0 = time.perf_counter()
            moved = 0
            for local, key in unit.params:
                host = self.master[key]
                w = host.to(device=self.device, dtype=self.dtype or host.dtype, non_blocking=True)
                patches = self.patches.get(key)
                if patches:
                    w = apply_patches(w, patches)
                set_param(module, local, w)
                moved += host.numel() * host.element_size()
            self.transfers += 1
            self.on_transfer(moved, time.perf_counter() - t0)

        return hook

    def _post(self, unit: Unit) -> Callable[..., None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            for local, key in unit.params:
                set_param(module, local, self.master[key])

        return hook
