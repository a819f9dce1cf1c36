"""Driving a run: the synchronous loop, the asyncio loop it switches to, and blocking on coroutines.

A run starts synchronous; the first ready async node moves the rest of the run onto an asyncio
loop (:func:`run_coroutine_blocking`), where async nodes run as concurrent tasks.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from comfy_notebook.errors import ExecutionInterrupted

if TYPE_CHECKING:
    from comfy_notebook.engine._run import PromptRun

__all__ = ["check_between", "drive", "drive_async", "run_coroutine_blocking"]


def run_coroutine_blocking(
    coro: Coroutine[Any, Any, Any], on_interrupt: Callable[[], None] | None = None
) -> Any:
    """Run a coroutine to completion from synchronous code.

    Uses ``asyncio.run`` when no loop runs in this thread; inside Jupyter (a loop is already
    running) it runs on a private loop in a helper thread.  A ``KeyboardInterrupt`` while
    waiting calls ``on_interrupt`` (e.g. set the interrupt flag) and is re-raised once the
    helper has finished, unless the coroutine raised an error of its own.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = ctx.run(asyncio.run, coro)
        except BaseException as exc:  # handed back to the calling thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="comfy-notebook-async", daemon=True)
    thread.start()
    interrupted = False
    while thread.is_alive():
        try:
            thread.join(0.05)
        except KeyboardInterrupt:
            interrupted = True
            if on_interrupt is not None:
                on_interrupt()
    if "error" in box:
        raise box["error"]
    if interrupted:
        raise KeyboardInterrupt
    return box.get("value")


def check_between(run: PromptRun) -> None:
    """Interrupt check between nodes."""
    if run.flag.is_set():
        queue = run.ready_sync or run.ready_async
        nxt = queue[-1] if queue else None
        raise ExecutionInterrupted(nxt, run.nodes[nxt].class_type if nxt else None)


def drive(run: PromptRun) -> None:
    """Run everything scheduled; switches to asyncio when an async node is ready."""
    ready_sync = run.ready_sync
    while True:
        if run.flag.is_set():
            check_between(run)
        if run.ready_async:
            run_coroutine_blocking(drive_async(run), on_interrupt=run.flag.set)
            return
        if ready_sync:
            coro = run.execute(ready_sync.pop())
            try:
                coro.send(None)
            except StopIteration:
                continue
            coro.close()
            raise RuntimeError("a synchronous node awaited; mark its function async def")
        if run.needed:
            raise run.cycle_error()
        return


async def drive_async(run: PromptRun) -> None:
    """The same loop with async nodes started as concurrent tasks."""
    tasks: dict[asyncio.Future[None], str] = {}
    try:
        while True:
            check_between(run)
            while run.ready_async:
                nid = run.ready_async.pop()
                run.running.add(nid)
                tasks[asyncio.ensure_future(run.execute(nid))] = nid
            if run.ready_sync:
                await run.execute(run.ready_sync.pop())
                continue
            if tasks:
                done, _ = await asyncio.wait(tasks, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    run.running.discard(tasks.pop(task))
                for task in done:
                    task.result()
                continue
            if run.needed:
                raise run.cycle_error()
            return
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
