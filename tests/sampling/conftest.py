"""Fixtures for sampling tests: k-diffusion's sampling.py loaded on its own, toy denoisers."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def kdiff():
    """k-diffusion 0.1.1.post1 ``sampling`` module, without its torchvision-importing __init__."""
    spec = importlib.util.find_spec("k_diffusion")
    root = Path(spec.submodule_search_locations[0])
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(root)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    names = ("k_diffusion", "k_diffusion.utils")  # sampling.py also imports torchdiffeq (a test extra)
    saved = {k: sys.modules.get(k) for k in names}
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = pkg, utils
    try:
        sspec = importlib.util.spec_from_file_location("k_diffusion.sampling", root / "sampling.py")
        mod = importlib.util.module_from_spec(sspec)
        sspec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


class GaussianDenoiser:
    """Exact denoiser of data ~ N(mu, s^2) per element: E[x0 | x] at noise level sigma."""

    def __init__(self, mu: float = 0.5, s: float = 0.7) -> None:
        self.mu, self.s, self.calls = mu, s, 0

    def __call__(self, x, sigma, **kw):
        self.calls += 1
        sig = sigma.view(-1, *([1] * (x.ndim - 1)))
        return self.mu + (self.s**2 / (self.s**2 + sig**2)) * (x - self.mu)


@pytest.fixture
def gaussian():
    return GaussianDenoiser


@pytest.fixture
def nonlinear():
    """A deterministic nonlinear toy denoiser (stands in for a network)."""

    def model(x, sigma, **kw):
        sig = sigma.view(-1, 1, 1, 1)
        return torch.tanh(x * 0.3) * (1 / (1 + sig)) + 0.1 * x.roll(1, dims=-1) / (1 + sig**2)

    return model
