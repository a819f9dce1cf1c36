"""Fixtures for the runtime tests: tiny nn.Modules and a manager with a fake device capacity."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from comfy_notebook.runtime import DevicePolicy, ModelManager


class Toy(nn.Module):
    """Three Linears + a conv of known sizes (fp32): 4*(16*16+16)=1088 B per 16x16 Linear."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, width)
        self.big = nn.Linear(width, 4 * width)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, W]
        h = torch.relu(self.a(x))
        h = self.b(h)
        img = self.conv(h[:, :16].reshape(-1, 4, 2, 2))  # [B, 4, 2, 2]
        return self.out(torch.relu(self.big(h))) + img.flatten(1).sum(1, keepdim=True)


def toy_bytes(width: int = 16) -> int:
    """Parameter bytes of Toy(width)."""
    return sum(p.numel() * 4 for p in Toy(width).parameters())


@pytest.fixture
def toy_factory() -> Callable[..., Callable[[], nn.Module]]:
    """Factory of factories: toy_factory(seed) builds the same weights on every call."""

    def make(seed: int = 0, width: int = 16) -> Callable[[], nn.Module]:
        calls = {"n": 0}

        def factory() -> nn.Module:
            calls["n"] += 1
            torch.manual_seed(seed)
            return Toy(width)

        factory.calls = calls  # type: ignore[attr-defined]
        return factory

    return make


@pytest.fixture
def manager_with_capacity() -> Callable[[int], ModelManager]:
    """manager_with_capacity(capacity) -> a CPU manager doing accounting against a fake device."""

    def make(capacity: int, **kw: object) -> ModelManager:
        return ModelManager(DevicePolicy.cpu(), capacity_bytes=capacity, **kw)  # type: ignore[arg-type]

    return make
