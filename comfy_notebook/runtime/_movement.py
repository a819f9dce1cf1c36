"""Weight movement for the model manager: host master copies, device copies, patches on device.

The host master copy of a model's weights is one 64-byte-aligned flat uint8 buffer (pinned on
CUDA) with typed views per parameter; the device working copy is either one DMA of that buffer
or per-tensor copies.  Every unit's parameters are re-pointed at whichever copy is current.
These functions move tensors only; the manager does the accounting and the events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from comfy_notebook.runtime.patches import Patch, apply_patches
from comfy_notebook.runtime.streaming import Unit, find_units, set_param

if TYPE_CHECKING:
    from comfy_notebook.runtime._managed import ManagedModel

__all__ = [
    "adopt_weights",
    "buffers_to",
    "flatten",
    "move_buffers",
    "patch_resident",
    "place_full",
    "place_partial",
    "point_units",
    "restore_host",
    "split_units",
    "sync",
    "views",
]


def flatten(params: Mapping[str, Tensor], *, pin: bool) -> tuple[dict[str, Tensor], Tensor]:
    """Copy ``params`` into one (pinned) uint8 buffer; returns the views and the buffer."""
    offsets, total = {}, 0
    for key, p in params.items():
        total = -(-total // 64) * 64  # 64-byte alignment for every view
        offsets[key] = total
        total += p.numel() * p.element_size()
    flat = torch.empty(total, dtype=torch.uint8, pin_memory=pin)  # [total bytes]
    out = views(flat, params, offsets)
    devices = set()
    for key, p in params.items():
        out[key].copy_(p.detach(), non_blocking=pin)  # device -> pinned: DMA, synced below
        devices.add(p.device)
    for device in devices:
        sync(device)
    return out, flat


def buffers_to(module: nn.Module, device: torch.device) -> None:
    """Move ``module``'s buffers (not its parameters) to ``device``."""
    for mod in module.modules():
        for k, b in mod._buffers.items():
            if b is not None and b.device != device:
                mod._buffers[k] = b.to(device)


def views(flat: Tensor, like: Mapping[str, Tensor],
          offsets: Mapping[str, int] | None = None) -> dict[str, Tensor]:
    """Typed views into ``flat`` with the shapes of ``like`` (offsets taken from ``like``'s)."""
    if offsets is None:
        base = next(iter(like.values())).untyped_storage().data_ptr() if like else 0
        offsets = {k: t.data_ptr() - base for k, t in like.items()}
    out = {}
    for key, t in like.items():
        n = t.numel() * t.element_size()
        out[key] = flat[offsets[key]:offsets[key] + n].view(t.dtype).view(t.shape)
    return out


def point_units(units: Iterable[Unit], weights: Mapping[str, Tensor]) -> None:
    """Re-point every parameter of ``units`` at ``weights[canonical key]``."""
    for unit in units:
        for local, key in unit.params:
            set_param(unit.module, local, weights[key])


def adopt_weights(m: ManagedModel, module: nn.Module, *, pin: bool) -> None:
    """Record ``module``'s units, sizes and buffers on ``m`` and make the host master copy."""
    m._units = find_units(module)
    params = {key: unit.module._parameters[local] for unit in m._units
              for local, key in unit.params}
    m.nbytes = sum(u.nbytes for u in m._units)
    if m.dtype is None and params:
        m.dtype = next(iter(params.values())).dtype
    m._host_buffers = {(id(mod), k): b for mod in module.modules()
                       for k, b in mod._buffers.items() if b is not None}
    m.buffer_bytes = sum(b.numel() * b.element_size() for b in m._host_buffers.values())
    if pin and params:
        m._master, m._flat_host = flatten(params, pin=True)
    else:
        m._master, m._flat_host = {k: p.detach() for k, p in params.items()}, None
    point_units(m._units, m._master)


def place_full(m: ManagedModel, device: torch.device) -> None:
    """Device copy of every weight: one DMA of the flat pinned buffer when there is one."""
    if m._flat_host is not None:
        m._flat_device = torch.empty_like(m._flat_host, device=device)
        m._flat_device.copy_(m._flat_host, non_blocking=True)  # one big DMA
        weights = views(m._flat_device, m._master)
    else:
        weights = {k: t.to(device, non_blocking=True) for k, t in m._master.items()}
    point_units(m._units, weights)


def split_units(units: Iterable[Unit], budget: int) -> tuple[list[Unit], list[Unit]]:
    """(resident, streamed): the largest units first, as long as they fit ``budget`` bytes."""
    resident, streamed, left = [], [], budget
    for unit in sorted(units, key=lambda u: -u.nbytes):  # largest first
        if unit.nbytes <= left:
            resident.append(unit)
            left -= unit.nbytes
        else:
            streamed.append(unit)
    return resident, streamed


def place_partial(m: ManagedModel, resident: Iterable[Unit], device: torch.device) -> None:
    """Device copies of the weights of the ``resident`` units only."""
    for unit in resident:
        for local, key in unit.params:
            set_param(unit.module, local, m._master[key].to(device, non_blocking=True))


def move_buffers(m: ManagedModel, device: torch.device, host: torch.device) -> None:
    """Module buffers to ``device`` (from their host copies; the host copies themselves on host)."""
    assert m._module is not None
    for mod in m._module.modules():
        for k in list(mod._buffers):
            buf = m._host_buffers.get((id(mod), k))
            if buf is not None:
                mod._buffers[k] = buf if device == host else buf.to(device)


def restore_host(m: ManagedModel, host: torch.device) -> None:
    """Drop the device copy: streaming hooks off, parameters and buffers back on the host master."""
    if m._streamer is not None:
        m._streamer.remove()
        m._streamer = None
    point_units(m._units, m._master)
    move_buffers(m, host, host)
    m._flat_device = None


def patch_resident(m: ManagedModel, new: Mapping[str, tuple[Patch, ...]], *, same_memory: bool
                   ) -> tuple[int, int]:
    """Make the resident weights carry exactly ``new`` (keys patched before or now).

    Same memory: patched weights are new tensors, unpatched ones the master itself.  Separate
    device: the master is copied back in place, then patched in place.  Returns (weights
    touched, bytes copied to the device); streamed units are patched by their hooks.
    """
    keys = set(m._applied_patches) | set(new)
    owners = {key: (unit, local) for unit in m._units for local, key in unit.params}
    touched = copied = 0
    for key in sorted(keys):
        unit, local = owners[key]
        if unit.prefix not in m._resident:
            continue  # streamed: the hook patches on the fly
        base = m._master[key]
        if same_memory:
            w = apply_patches(base, new[key]) if key in new else base
            set_param(unit.module, local, w)
        else:
            w = unit.module._parameters[local]
            w.copy_(base, non_blocking=True)
            copied += base.numel() * base.element_size()
            if key in new:
                w.copy_(apply_patches(w, new[key]))
        touched += 1
    return touched, copied


def sync(device: torch.device) -> None:
    """Wait for the device's copies to finish (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
