"""The common samplers do no host synchronisation per step (a GPU never waits for the CPU).

Every way a tensor reaches the host (``item``, ``tolist``, ``bool``, ``float``, ``int``, ``cpu``,
``numpy``) is counted while ``ksample`` runs with a stub model; the count must not grow with the
number of steps (setup work, such as the one host copy of the sigmas, happens once).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch

from comfy_notebook.families.sd1 import SD15_LATENT
from comfy_notebook.sampling import DiscreteSchedule, ksample
from comfy_notebook.sampling.model_sampling import ModelSampling

_HOST = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


def _stub(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **kw: Any) -> torch.Tensor:
    return x * 0.1


def _host_calls(monkeypatch: pytest.MonkeyPatch, sampler: str, steps: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    ctx = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(0))
    kw = dict(model_sampling=ModelSampling(DiscreteSchedule()), latent_format=SD15_LATENT,
              latent={"samples": torch.zeros(1, 4, 8, 8)},
              positive=[[ctx, {}]], negative=[[ctx * 0, {}]], seed=3, cfg=7.0, sampler_name=sampler,
              scheduler="karras")
    counting = False

    def step(info: Any) -> None:
        nonlocal counting
        counting = True  # count from the first step on: setup is allowed to read the host

    with monkeypatch.context() as m:
        for name in _HOST:
            real = getattr(torch.Tensor, name)

            def wrapper(self: torch.Tensor, *a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
                if counting:
                    counts[_name] += 1
                return _real(self, *a, **k)

            m.setattr(torch.Tensor, name, wrapper)
        out = ksample(_stub, steps=steps, callback=step, **kw)
    assert out["samples"].isfinite().all()
    counts.pop("cpu", None)  # the final result goes to the host once, after the loop
    return counts


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde_gpu"])
def test_no_host_reads_inside_the_sampling_loop(monkeypatch: pytest.MonkeyPatch, sampler: str) -> None:
    assert _host_calls(monkeypatch, sampler, 4) == _host_calls(monkeypatch, sampler, 8) == Counter()
