"""Interrupt anywhere (issue 19): an interrupt at every injection point of the default prompt —
every node boundary, every sampling step, every model-manager placement step, enumerated by
the harness from the product's own hooks — leaves no model in use, no reserved inference memory,
no cache entry for an unfinished node, no tensor of the interrupted frames alive, and the rerun
gives the bit-identical image of a clean run.  Two managers: roomy (full loads) and a simulated
8 MiB device (partial loads and streaming)."""

from __future__ import annotations

import pathlib

import pytest
from harness import Outcome, Point, Reference, clean_run, run_point, tiny_prompt

from comfy_notebook.errors import ExecutionInterrupted

SCENARIOS = {"roomy": None, "tight": 8 << 20}
PARAMS = [pytest.param("roomy"), pytest.param("tight", marks=pytest.mark.slow)]


def _failures(outcomes: list[Outcome], accept: tuple[str, ...]) -> list[str]:
    bad = []
    for o in outcomes:
        what = o.raised[0] if o.raised is not None else None
        if what not in accept:
            bad.append(f"{o.point}: raised {o.raised}")
        bad += [f"{o.point}: {p}" for p in o.problems]
        bad += [f"{o.point}: leaked {leak}" for leak in o.leaks]
        if not o.identical:
            bad.append(f"{o.point}: rerun differs from the clean run")
    return bad


@pytest.mark.parametrize("scenario", PARAMS)
def test_keyboard_interrupt_at_every_point(tiny_root: pathlib.Path, scenario: str) -> None:
    """A KeyboardInterrupt (the kernel's interrupt) raised at every point."""
    api, cap = tiny_prompt(), SCENARIOS[scenario]
    ref: Reference = clean_run(tiny_root, api, capacity=cap)
    kinds = {p.kind for p in ref.points}
    assert kinds == {"node", "step", "placement"} and len(ref.points) >= 40
    outcomes = [run_point(tiny_root, api, ref, p, lambda p: KeyboardInterrupt(), capacity=cap)
                for p in ref.points]
    assert _failures(outcomes, ("ExecutionInterrupted",)) == []


@pytest.mark.parametrize("scenario", PARAMS)
def test_interrupt_request_at_every_point(tiny_root: pathlib.Path, scenario: str) -> None:
    """``session.interrupt()`` asked at every point: the run stops at the next check (or ends
    normally when no check comes after the point), consistent either way."""
    api, cap = tiny_prompt(), SCENARIOS[scenario]
    ref = clean_run(tiny_root, api, capacity=cap)
    outcomes = [run_point(tiny_root, api, ref, p, None, capacity=cap, flag=True) for p in ref.points]
    assert _failures(outcomes, ("ExecutionInterrupted", None)) == []
    stopped = [o for o in outcomes if o.raised is not None]
    assert len(stopped) >= len(outcomes) // 2  # the request is honoured, not ignored


def test_leak_detector_sees_a_kept_traceback(tiny_root: pathlib.Path) -> None:
    """The leak check can fail: a fault whose traceback is kept alive is reported."""
    api = tiny_prompt()
    ref = clean_run(tiny_root, api)
    kept: list[BaseException] = []

    def fault(p: Point) -> BaseException:
        exc = KeyboardInterrupt()
        kept.append(exc)
        return exc

    point = next(p for p in ref.points if p.site == "step:KSampler")
    outcome = run_point(tiny_root, api, ref, point, fault)
    assert outcome.leaks, "a traceback held by the test must keep the sampler's tensors alive"
    kept.clear()


def test_interrupt_is_execution_interrupted_naming_the_node(tiny_root: pathlib.Path) -> None:
    api = tiny_prompt()
    ref = clean_run(tiny_root, api)
    point = next(p for p in ref.points if p.site == "step:KSampler" and p.occurrence == 1)
    from harness import Injector, new_session

    s = new_session(tiny_root)
    with Injector(point, lambda p: KeyboardInterrupt()).installed(s), \
            pytest.raises(ExecutionInterrupted) as info:
        s.run_prompt(api)
    assert info.value.node_id == "3"
