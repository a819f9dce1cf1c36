"""The async API: priorities, cancellation, interrupts and per-prompt events, from a running loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
from typing import Any

import pytest

from comfy_notebook.engine.events import NodeProgress, RunFinished
from comfy_notebook.errors import ExecutionInterrupted

from .conftest import GATE, RAN, slow_prompt


def test_twenty_concurrent_prompts_finish_in_priority_order_and_one_is_cancelled(queue_session: Any) -> None:
    s = queue_session
    rng = random.Random(0)
    priorities = [rng.randint(-3, 3) for _ in range(20)]
    finished: list[int] = []

    async def one(i: int) -> Any:
        result = await s.run_prompt_async(slow_prompt(i, steps=1), priority=priorities[i])
        finished.append(i)
        return result

    async def main() -> list[Any]:
        loop_thread = threading.get_ident()
        with s.queue.paused():
            tasks = [asyncio.create_task(one(i)) for i in range(20)]
            await asyncio.sleep(0.05)  # every task has submitted its prompt
            assert len(s.queue.pending) == 20
            victim = s.queue.pending[5]
            assert s.cancel(victim)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert threading.get_ident() == loop_thread
        return [victim, results]

    victim, results = asyncio.run(main())
    cancelled = [i for i, r in enumerate(results) if isinstance(r, asyncio.CancelledError)]
    assert len(cancelled) == 1
    assert (f"{victim}", "cancelled") in s.queue.history
    expected = sorted((i for i in range(20) if i not in cancelled), key=lambda i: (-priorities[i], i))
    assert finished == expected and expected == RAN  # ran, and finished, by priority (FIFO ties)
    assert all(r.ui["2"]["value"] == [i] for i, r in enumerate(results) if i not in cancelled)


def test_interrupt_stops_only_the_running_prompt(queue_session: Any) -> None:
    s = queue_session
    GATE.release.clear()  # the first prompt will wait inside its node
    first = s.submit(slow_prompt(1, steps=3))
    second = s.submit(slow_prompt(2, steps=3))
    assert GATE.entered.wait(10)
    assert s.queue.running == [first.prompt_id]
    s.interrupt()
    GATE.release.set()
    with pytest.raises(ExecutionInterrupted):
        first.result(10)
    assert second.result(10).ui["2"]["value"] == [2]  # the next one ran untouched
    assert RAN == [2]
    assert s.queue.interrupt() is False  # nothing runs now: nothing to interrupt


def test_events_are_delivered_per_prompt_and_a_future_is_awaitable(queue_session: Any) -> None:
    s = queue_session
    seen: list[Any] = []

    async def main() -> tuple[Any, list[Any]]:
        a = s.submit(slow_prompt(10, steps=4))
        b = s.submit(slow_prompt(11, steps=2), on_event=seen.append)
        streamed = [e async for e in b.stream()]
        return await a, streamed

    result_a, streamed = asyncio.run(main())
    assert result_a.ui["2"]["value"] == [10]
    pid = {e.prompt_id for e in seen}
    assert len(pid) == 1 and pid != {result_a.prompt_id}
    progress = [(e.value, e.total) for e in seen if isinstance(e, NodeProgress)]
    assert progress == [(1, 2), (2, 2)]
    assert isinstance(streamed[-1], RunFinished) and streamed == seen


def test_cancel_of_a_finished_or_unknown_prompt_is_false_and_errors_propagate(queue_session: Any) -> None:
    s = queue_session
    fut = s.submit(slow_prompt(3))
    fut.result(10)
    assert s.cancel(fut.prompt_id) is False and s.cancel("nope") is False
    bad = s.submit({"1": {"class_type": "Missing", "inputs": {}}})
    with pytest.raises(Exception, match="Missing"):
        bad.result(10)
    assert s.submit(slow_prompt(4)).result(10).ui["2"]["value"] == [4]  # the queue goes on
    assert isinstance(fut, concurrent.futures.Future)


def test_a_cell_waits_for_the_queued_prompt_never_two_at_once(queue_session: Any) -> None:
    import time

    s = queue_session
    active = []
    overlap = []

    def watch(event: Any) -> None:
        from comfy_notebook.engine.events import RunFinished, RunStarted

        if isinstance(event, RunStarted):
            if active:
                overlap.append(event.prompt_id)
            active.append(event.prompt_id)
        elif isinstance(event, RunFinished):
            active.remove(event.prompt_id)

    s.subscribe(watch)
    GATE.release.clear()
    queued = s.submit(slow_prompt(1, steps=2))
    assert GATE.entered.wait(10)
    t = threading.Timer(0.3, GATE.release.set)
    t.start()
    t0 = time.monotonic()
    direct = s.run_prompt(slow_prompt(2, steps=1))  # from this thread, while the queue runs
    assert time.monotonic() - t0 >= 0.25 and queued.done()  # it waited its turn
    assert direct.ui["2"]["value"] == [2] and not overlap
    t.join()


def test_an_interrupted_prompt_awaited_in_a_loop_raises_execution_interrupted(queue_session: Any) -> None:
    s = queue_session

    async def main() -> str:
        GATE.release.clear()
        fut = s.submit(slow_prompt(5, steps=3))
        while not GATE.entered.is_set():
            await asyncio.sleep(0.01)
        s.interrupt()
        GATE.release.set()
        try:
            await fut
        except ExecutionInterrupted as exc:  # a KeyboardInterrupt: caught here, the loop lives on
            return f"interrupted {exc.prompt_id == fut.prompt_id}"
        return "finished"

    assert asyncio.run(main()) == "interrupted True"
