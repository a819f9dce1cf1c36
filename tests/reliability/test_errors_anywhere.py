"""Errors anywhere (issue 19): an exception injected at every injection point (node functions,
sampling steps, every model-manager placement step) ends in one ``NodeExecutionError`` and
leaves the same invariants as an interrupt; an out-of-memory error at each placement site and
sampling step either recovers (retry with partial loading, same image) or raises one clear
``ModelMemoryError``, with the manager's accounting equal to its modules afterwards."""

from __future__ import annotations

import pathlib

import pytest
import torch
from harness import Injector, Outcome, clean_run, new_session, run_point, tiny_prompt

from comfy_notebook.errors import ModelMemoryError, NodeExecutionError

SCENARIOS = {"roomy": None, "tight": 8 << 20}
PARAMS = [pytest.param("roomy"), pytest.param("tight", marks=pytest.mark.slow)]
# sites where memory is allocated (a persistent out-of-memory is only real there)
ALLOCATING = ("manager._adopt", "manager._ensure_built", "manager._load_full", "manager._load_partial",
              "manager._patch", "movement.flatten", "movement.place_full", "movement.place_partial",
              "movement.adopt_weights", "movement.patch_resident")


def _failures(outcomes: list[Outcome], ok: object) -> list[str]:
    bad = []
    for o in outcomes:
        if not ok(o.raised):  # type: ignore[operator]
            bad.append(f"{o.point}: raised {o.raised}")
        bad += [f"{o.point}: {p}" for p in o.problems]
        bad += [f"{o.point}: leaked {leak}" for leak in o.leaks]
        if not o.identical:
            bad.append(f"{o.point}: rerun differs from the clean run")
    return bad


def _node_error(raised: object) -> bool:
    return raised is not None and raised[0] == "NodeExecutionError"  # type: ignore[index]


def _recovered_or_memory_error(raised: object) -> bool:
    return raised is None or (raised[0] == "NodeExecutionError" and raised[1] == "ModelMemoryError")  # type: ignore[index]


@pytest.mark.parametrize("scenario", PARAMS)
def test_exception_at_every_point(tiny_root: pathlib.Path, scenario: str) -> None:
    api, cap = tiny_prompt(), SCENARIOS[scenario]
    ref = clean_run(tiny_root, api, capacity=cap)
    outcomes = [run_point(tiny_root, api, ref, p, lambda p: RuntimeError(f"injected at {p}"), capacity=cap)
                for p in ref.points]
    assert len(outcomes) >= 40
    assert _failures(outcomes, _node_error) == []


@pytest.mark.parametrize("scenario", PARAMS)
def test_out_of_memory_once_at_every_placement_and_step(tiny_root: pathlib.Path, scenario: str) -> None:
    api, cap = tiny_prompt(), SCENARIOS[scenario]
    ref = clean_run(tiny_root, api, capacity=cap)
    points = [p for p in ref.points if p.kind in ("placement", "step")]
    outcomes = [run_point(tiny_root, api, ref, p, lambda p: torch.OutOfMemoryError("injected"), capacity=cap)
                for p in points]
    assert _failures(outcomes, _recovered_or_memory_error) == []
    assert any(o.raised is None for o in outcomes)  # recovery happens, not only errors


@pytest.mark.parametrize("scenario", PARAMS)
def test_persistent_out_of_memory_at_allocation_sites(tiny_root: pathlib.Path, scenario: str) -> None:
    """Out of memory that does not go away on retry: one clear ModelMemoryError, nothing else."""
    api, cap = tiny_prompt(), SCENARIOS[scenario]
    ref = clean_run(tiny_root, api, capacity=cap)
    points = [p for p in ref.points if p.kind == "step" or p.site in ALLOCATING]
    assert points
    outcomes = [run_point(tiny_root, api, ref, p, lambda p: torch.OutOfMemoryError("injected"),
                          capacity=cap, persistent=True) for p in points]
    assert _failures(outcomes, _recovered_or_memory_error) == []


def test_out_of_memory_making_the_host_copy_is_a_model_memory_error(tiny_root: pathlib.Path) -> None:
    """Regression: an out-of-memory while registering a model (its host master copy, pinned on
    CUDA) used to surface as a bare OutOfMemoryError and left the model registered with no
    weights accounted (nbytes 0), so the manager under-counted it for the rest of the session."""
    api = tiny_prompt()
    ref = clean_run(tiny_root, api)
    point = next(p for p in ref.points if p.site == "movement.adopt_weights")
    s = new_session(tiny_root)
    with Injector(point, lambda p: torch.OutOfMemoryError("injected")).installed(s), \
            pytest.raises(NodeExecutionError) as info:
        s.run_prompt(api)
    assert isinstance(info.value.original, ModelMemoryError)
    assert "Fix:" in str(info.value.original) and "host" in str(info.value.original)
    assert all(m.nbytes > 0 for m in s.models._models.values())
    s.run_prompt(api)
    assert all(m.nbytes > 0 for m in s.models._models.values())
