"""Seeded noise exactly as ComfyUI draws it (``comfy/sample.py``, ``comfy/k_diffusion/sampling.py``).

- Initial noise: ``torch.manual_seed(seed)`` then CPU ``randn`` (one draw per batch index up to
  the largest when the latent carries ``batch_index``).
- Ancestral samplers: their own ``torch.Generator`` on the latent's device, seeded with the seed
  itself on every device (``default_noise_sampler`` at ComfyUI a125cd8).  On the CPU its first
  draw therefore repeats the initial noise, as in ComfyUI.
- SDE samplers: a ``torchsde`` Brownian tree seeded with the seed, built on the CPU (``_gpu``
  variants: on the latent's device).

``cpu_noise=True`` draws every per-step noise on the CPU and moves it to the device, so results
do not depend on the device (they equal the CPU results).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["BrownianTreeNoiseSampler", "NoiseSampler", "default_noise_sampler", "prepare_noise"]

NoiseSampler = Callable[[Tensor, Tensor], Tensor]
"""``noise_sampler(sigma, sigma_next) -> Tensor`` of the latent's shape, unit variance."""


def prepare_noise(latent: Tensor, seed: int, batch_index: Sequence[int] | None = None) -> Tensor:
    """Initial noise of ``latent``'s shape on the CPU, as ComfyUI's ``prepare_noise``.

    Parameters
    ----------
    latent:
        ``[B, C, H, W]`` latent; only its shape and dtype are used.
    seed:
        Seeds the global CPU generator (``torch.manual_seed``), as ComfyUI does.
    batch_index:
        Optional per-sample indices: noise is drawn for every index from 0 to the largest, in
        order, and the drawn noise of each requested index is kept.

    Returns
    -------
    Tensor
        ``[B, C, H, W]`` noise on the CPU in ``latent.dtype``.
    """
    generator = torch.manual_seed(seed)
    shape = list(latent.shape)
    if batch_index is None:
        noise = torch.randn(shape, dtype=torch.float32, generator=generator, device="cpu")
        return noise.to(latent.dtype)
    inds = [int(i) for i in batch_index]
    wanted = set(inds)
    drawn: dict[int, Tensor] = {}
    for i in range(max(inds) + 1):
        one = torch.randn([1, *shape[1:]], dtype=torch.float32, generator=generator, device="cpu")
        if i in wanted:
            drawn[i] = one
    return torch.cat([drawn[i] for i in inds], dim=0).to(latent.dtype)


def default_noise_sampler(x: Tensor, seed: int | None = None, cpu: bool = False) -> NoiseSampler:
    """Ancestral noise: ``randn`` of ``x``'s shape from a generator seeded with ``seed``.

    The generator lives on ``x``'s device (``cpu=True``: on the CPU, results moved to the
    device) and is seeded with ``seed`` unchanged, as ComfyUI a125cd8 does on every device.
    """
    device = torch.device("cpu") if cpu else x.device
    generator: torch.Generator | None = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    shape, dtype, target = x.shape, x.dtype, x.device

    def sample(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return torch.randn(shape, dtype=dtype, device=device, generator=generator).to(target)

    return sample


class BrownianTreeNoiseSampler:
    """Noise from a seeded ``torchsde.BrownianTree`` over [sigma_min, sigma_max].

    ``noise(sigma, sigma_next)`` is the Brownian increment between the two sigmas divided by
    ``sqrt(|sigma_next - sigma|)``, so it has unit variance and is consistent across step
    sizes.  ``cpu=True`` builds the tree on the CPU (ComfyUI's default; ``_gpu`` samplers use
    ``cpu=False``).
    """

    def __init__(
        self, x: Tensor, sigma_min: Tensor | float, sigma_max: Tensor | float,
        seed: int | None = None, cpu: bool = True,
    ) -> None:
        import torchsde  # imported here: only SDE samplers need it

        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        t0, t1, self._sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w0 = torch.zeros_like(x)
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, ()).item())
        self._cpu = cpu
        if cpu:
            t0, w0, t1 = t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        else:
            t0, t1 = t0.to(x.device), t1.to(x.device)
        self._tree = torchsde.BrownianTree(t0, w0, t1, entropy=seed)

    _known: tuple[int, int, int, list[float]] | None = None

    def know(self, sigmas: Tensor) -> None:
        """Register the schedule (one host copy now): calls with elements of ``sigmas``
        (``sigmas[i]``, as the samplers pass them) then read the times from that copy, so a
        step does no host synchronisation.  The tree sees the same times, so the same noise."""
        if sigmas.ndim == 1 and len(sigmas):
            self._known = (sigmas.untyped_storage().data_ptr(), sigmas.storage_offset(),
                           sigmas.stride(0), sigmas.tolist())

    def _host(self, t: Tensor) -> float | None:
        """The host value of ``t`` when it is an element of the registered sigmas, else None."""
        known = self._known
        if known is None or not isinstance(t, Tensor) or t.ndim != 0:
            return None
        ptr, offset, stride, values = known
        if t.untyped_storage().data_ptr() != ptr:
            return None
        i, rem = divmod(t.storage_offset() - offset, stride)
        return values[i] if rem == 0 and 0 <= i < len(values) else None

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        device, dtype = a.device, a.dtype
        ha, hb = self._host(a), self._host(b)
        if ha is not None and hb is not None:  # host floats: no sync (torchsde takes float())
            t0, t1, sign = (ha, hb, 1) if ha < hb else (hb, ha, -1)
        else:
            t0, t1, sign = (a, b, 1) if a < b else (b, a, -1)
            if self._cpu:
                t0, t1 = t0.detach().cpu().float(), t1.detach().cpu().float()
        with warnings.catch_warnings():
            # sigma_max read back in float32 can exceed the tree's end by one ulp; torchsde
            # warns and clamps, which is what we want.
            warnings.filterwarnings("ignore", message="Should have tb<=t1", category=UserWarning)
            w = self._tree(t0, t1).to(device=device, dtype=dtype) * (self._sign * sign)
        return w / (b - a).abs().sqrt()
