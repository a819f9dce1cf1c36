"""The prompt queue: priorities, cancellation, interrupts and per-prompt events.

Prompts run on worker threads (as many as the backend's ``concurrency``: one for one GPU), so the
caller's thread, and Jupyter's running event loop, never block.  ``submit`` returns a
:class:`PromptFuture`: a ``concurrent.futures.Future`` that can also be awaited in any running
asyncio loop (it is bridged with ``asyncio.wrap_future``; no ``nest_asyncio``).

Order: higher ``priority`` first; equal priorities in submission order.  ``cancel(prompt_id)``
removes a waiting prompt (its future reports ``cancelled()``) or interrupts a running one (its
future raises ``ExecutionInterrupted``); ``interrupt()`` stops only the prompt that is running.
``ExecutionInterrupted`` is a ``KeyboardInterrupt`` (an interrupted run stops a loop of runs,
like Ctrl-C): catch it around ``await`` where a loop of prompts should go on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from contextlib import contextmanager
from typing import Any

from comfy_notebook.backends.protocol import Backend
from comfy_notebook.engine.events import Event, RunFinished, RunInterrupted

__all__ = ["PromptFuture", "PromptQueue"]

log = logging.getLogger(__name__)
_DONE = object()


class PromptFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """The future of one queued prompt.

    Attributes
    ----------
    prompt_id, priority:
        As submitted.
    events:
        The engine events of this prompt so far (``NodeProgress`` carries ``preview``).
    """

    def __init__(self, queue: PromptQueue, prompt: Mapping[str, Any], prompt_id: str,
                 priority: int, extra_data: Mapping[str, Any] | None) -> None:
        super().__init__()
        self._queue = queue
        self.prompt = prompt
        self.prompt_id = prompt_id
        self.priority = priority
        self.extra_data = extra_data
        self.events: list[Event] = []
        self._callbacks: list[Callable[[Event], None]] = []
        self._streams: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = []
        self._lock = threading.Lock()

    # -- events --------------------------------------------------------------------------
    def on_event(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn(event)`` for each later event of this prompt (on the worker thread)."""
        with self._lock:
            self._callbacks.append(fn)

    def _dispatch(self, event: Any) -> None:
        with self._lock:
            if event is not _DONE:
                self.events.append(event)
            callbacks, streams = tuple(self._callbacks), tuple(self._streams)
        if event is not _DONE:
            for fn in callbacks:
                try:
                    fn(event)
                except Exception:
                    log.exception("event callback %r failed", fn)
        for loop, q in streams:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(q.put_nowait, event)

    async def stream(self) -> AsyncIterator[Event]:
        """Yield this prompt's events (past ones first) until it finishes, in the running loop."""
        q: asyncio.Queue[Any] = asyncio.Queue()
        with self._lock:
            past = list(self.events)
            self._streams.append((asyncio.get_running_loop(), q))
        for event in past:
            yield event
        if self.done():
            return
        while True:
            item = await q.get()
            if item is _DONE:
                return
            yield item

    # -- futures ---------------------------------------------------------------------------
    def cancel(self) -> bool:
        """Cancel: a waiting prompt is removed, a running one interrupted (see the module doc)."""
        return self._queue.cancel(self.prompt_id)

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "done" if self.done() else (
            "running" if self.running() else "pending")
        return f"<PromptFuture {self.prompt_id[:8]} priority={self.priority} {state}>"


class PromptQueue:
    """A priority queue of prompts in front of a backend.

    Parameters
    ----------
    backend:
        Where prompts run.
    workers:
        Prompts run at once; default ``backend.concurrency`` (1 for a single GPU).
    """

    def __init__(self, backend: Backend, *, workers: int | None = None) -> None:
        self.backend = backend
        self.workers = max(1, int(workers or getattr(backend, "concurrency", 1)))
        self._heap: list[tuple[int, int, PromptFuture]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._running: dict[str, PromptFuture] = {}
        self._paused = False
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._subscribers: list[Callable[[Event], None]] = []
        self.history: list[tuple[str, str]] = []  # (prompt_id, "success" | "error" | "cancelled")

    # -- submitting ------------------------------------------------------------------------
    def submit(self, prompt: Mapping[str, Any], *, priority: int = 0, prompt_id: str | None = None,
               extra_data: Mapping[str, Any] | None = None,
               on_event: Callable[[Event], None] | None = None) -> PromptFuture:
        """Queue a prompt; returns its :class:`PromptFuture` (result: a ``PromptResult``)."""
        fut = PromptFuture(self, prompt, prompt_id or uuid.uuid4().hex, int(priority), extra_data)
        if on_event is not None:
            fut.on_event(on_event)
        with self._cond:
            if self._closed:
                raise RuntimeError("the prompt queue is closed; create a new session or queue")
            heapq.heappush(self._heap, (-fut.priority, next(self._seq), fut))
            self._start_workers()
            self._cond.notify()
        return fut

    async def run_async(self, prompt: Mapping[str, Any], **kwargs: Any) -> Any:
        """``await`` the result of a prompt (queued with ``submit``'s arguments)."""
        return await self.submit(prompt, **kwargs)

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        """Receive every prompt's events (on worker threads); returns an unsubscribe callable."""
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn) if fn in self._subscribers else None

    # -- control ---------------------------------------------------------------------------
    def cancel(self, prompt_id: str) -> bool:
        """Remove a waiting prompt, or interrupt it if it is running; False if it is unknown/done."""
        with self._cond:
            for i, (_, _, fut) in enumerate(self._heap):
                if fut.prompt_id == prompt_id:
                    del self._heap[i]
                    heapq.heapify(self._heap)
                    concurrent.futures.Future.cancel(fut)
                    self.history.append((prompt_id, "cancelled"))
                    fut._dispatch(_DONE)
                    return True
            running = prompt_id in self._running
        if running:
            self.backend.interrupt()
            return True
        return False

    def interrupt(self) -> bool:
        """Interrupt the running prompt (only it; the queue goes on); False if none runs."""
        with self._cond:
            if not self._running:
                return False
            self.backend.interrupt()
            return True

    def clear(self) -> int:
        """Cancel every waiting prompt; returns how many."""
        with self._cond:
            ids = [fut.prompt_id for _, _, fut in self._heap]
        return sum(self.cancel(pid) for pid in ids)

    @contextmanager
    def paused(self) -> Generator[PromptQueue, None, None]:
        """Hold the queue (nothing new starts) inside the block, e.g. while submitting a batch."""
        self.pause()
        try:
            yield self
        finally:
            self.resume()

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @property
    def pending(self) -> list[str]:
        """Waiting prompt ids, in the order they will run."""
        with self._cond:
            return [fut.prompt_id for _, _, fut in sorted(self._heap)]

    @property
    def running(self) -> list[str]:
        with self._cond:
            return list(self._running)

    def close(self, *, cancel_pending: bool = True, timeout: float | None = 30) -> None:
        """Stop the workers (after the running prompt); waiting prompts are cancelled."""
        if cancel_pending:
            self.clear()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    # -- workers ---------------------------------------------------------------------------
    def _start_workers(self) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.workers:
            t = threading.Thread(target=self._work, name=f"comfy-queue-{len(self._threads)}",
                                 daemon=True)
            self._threads.append(t)
            t.start()

    def _next(self) -> PromptFuture | None:
        with self._cond:
            while True:
                if self._closed and not self._heap:
                    return None
                if self._heap and not self._paused:
                    _, _, fut = heapq.heappop(self._heap)
                    if not fut.set_running_or_notify_cancel():
                        continue
                    self._running[fut.prompt_id] = fut
                    return fut
                if self._closed:
                    return None
                self._cond.wait()

    def _emit(self, fut: PromptFuture, event: Event) -> None:
        fut._dispatch(event)
        for fn in tuple(self._subscribers):
            try:
                fn(event)
            except Exception:
                log.exception("queue subscriber %r failed", fn)

    def _work(self) -> None:
        while True:
            fut = self._next()
            if fut is None:
                return
            try:
                result = self.backend.run_prompt(fut.prompt, prompt_id=fut.prompt_id,
                                                 extra_data=fut.extra_data,
                                                 on_event=lambda e, f=fut: self._emit(f, e))
            except BaseException as exc:
                status = "interrupted" if any(isinstance(e, RunInterrupted) for e in fut.events) else "error"
                with self._cond:
                    self._running.pop(fut.prompt_id, None)
                    self.history.append((fut.prompt_id, status))
                fut.set_exception(exc)
            else:
                with self._cond:
                    self._running.pop(fut.prompt_id, None)
                    self.history.append((fut.prompt_id, "success"))
                if not any(isinstance(e, RunFinished) for e in fut.events):
                    log.debug("backend %s sent no RunFinished for %s", self.backend, fut.prompt_id)
                fut.set_result(result)
            fut._dispatch(_DONE)

    def __repr__(self) -> str:
        return (f"<PromptQueue on {getattr(self.backend, 'name', self.backend)}: "
                f"{len(self.running)} running, {len(self._heap)} waiting>")
