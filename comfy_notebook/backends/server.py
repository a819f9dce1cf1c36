"""A ComfyUI server as a backend: ``/prompt``, the ``/ws`` websocket, ``/history``, ``/view``,
``/object_info``, ``/interrupt`` and ``/free`` (ComfyUI's HTTP API, see comfyui-reference.md §2).

The client runs its own asyncio loop on a daemon thread (aiohttp), so the synchronous methods
work from a notebook cell whose event loop is already running.  Progress comes over the websocket
(``progress``, ``executing``, ``executed``, ``execution_cached``, binary preview frames) and is
turned into the engine's typed events; completion is confirmed from ``/history``, which is also
polled, so a dropped websocket (reconnected in the background) loses no result.  A server that
stops answering for ``dead_after`` seconds fails the running prompt with a :class:`BackendError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_notebook.backends.protocol import EventCallback, ImageRef
from comfy_notebook.engine.events import (
    NodeCached,
    NodeFailed,
    NodeFinished,
    NodeProgress,
    NodeStarted,
    RunFinished,
    RunInterrupted,
    RunStarted,
)
from comfy_notebook.engine.executor import PromptResult
from comfy_notebook.errors import (
    BackendError,
    ExecutionInterrupted,
    NodeExecutionError,
    ValidationError,
)

__all__ = ["ComfyUIServer", "RemoteNodeError"]

log = logging.getLogger(__name__)
_PREVIEW_IMAGE = 1  # ComfyUI's BinaryEventTypes.PREVIEW_IMAGE


class RemoteNodeError(RuntimeError):
    """The exception a node raised on the server (type name and message as the server sent them)."""


@dataclass
class _Run:
    """What the websocket has told us about one prompt."""

    local_id: str
    prompt: Mapping[str, Any]
    on_event: EventCallback | None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    started: dict[str, float] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    previews: list[bytes] = field(default_factory=list)
    step: tuple[float, float] = (0.0, 0.0)

    def finish_previous(self) -> None:
        """ComfyUI says ``executed`` only for output nodes: the node that ran before the next
        ``executing`` (or the end) has finished."""
        if self.executed and self.executed[-1] not in self.finished:
            node = self.executed[-1]
            self.finished.add(node)
            seconds = time.perf_counter() - self.started.get(node, time.perf_counter())
            self.emit(NodeFinished(self.local_id, node, self.class_type(node), seconds, None))

    def emit(self, event: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("event callback failed on %s", type(event).__name__)

    def class_type(self, node_id: str | None) -> str:
        node = self.prompt.get(str(node_id)) if node_id is not None else None
        return str(node.get("class_type", "")) if isinstance(node, Mapping) else ""


class ComfyUIServer:
    """A ComfyUI server (``ComfyUIServer("http://host:8188", headers={...})``).

    Parameters
    ----------
    url:
        The server's address.
    headers:
        Sent with every request and the websocket handshake (e.g. an ``Authorization`` header).
    timeout:
        Seconds for one HTTP request.
    dead_after:
        Seconds without any answer from the server (HTTP or websocket) after which a running
        prompt fails with :class:`BackendError` instead of waiting.
    poll_interval:
        How often ``/history`` is read while a prompt runs (the websocket usually answers first).
    """

    concurrency = 1  # the server runs its queue one prompt at a time
    replaces_nodes = True  # a session on a server knows the server's nodes, not the built-ins

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 30.0,
                 dead_after: float = 15.0, poll_interval: float = 1.0) -> None:
        self.url = url.rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        self.name = self.url
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.dead_after = dead_after
        self.poll_interval = poll_interval
        self.client_id = uuid.uuid4().hex
        self._runs: dict[str, _Run] = {}  # server prompt id -> run
        self._current: _Run | None = None
        self._http: Any = None
        self._ws_task: asyncio.Task[None] | None = None
        self.ws_connected = False
        self.reconnects = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="comfyui-server-client",
                                        daemon=True)
        self._thread.start()

    # -- plumbing ----------------------------------------------------------------------------
    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        if self._loop.is_closed():
            coro.close()
            raise BackendError(f"the client of {self.url} is closed; create a new ComfyUIServer",
                               backend=self.url)

        async def guarded() -> tuple[bool, Any]:
            # ExecutionInterrupted is a KeyboardInterrupt: raised inside the loop it would stop
            # the loop's thread, so it travels back as a value and is raised in the caller.
            try:
                return True, await coro
            except (KeyboardInterrupt, SystemExit) as exc:
                return False, exc

        ok, value = asyncio.run_coroutine_threadsafe(guarded(), self._loop).result(timeout)
        if not ok:
            raise value
        return value

    async def _session(self) -> Any:
        import aiohttp

        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(headers=self.headers,
                                               timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._http

    def _unreachable(self, exc: BaseException, what: str) -> BackendError:
        return BackendError(
            f"ComfyUI server at {self.url} did not answer {what}: {type(exc).__name__}: {exc}.\n"
            "Fix: check that the server is running and reachable (its address, port and headers).",
            backend=self.url)

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import aiohttp

        http = await self._session()
        try:
            async with http.request(method, self.url + path, **kwargs) as resp:
                body = await resp.read()
                if resp.status >= 400 and not (path == "/prompt" and resp.status == 400):
                    raise BackendError(f"ComfyUI server at {self.url}: {method} {path} returned HTTP "
                                       f"{resp.status}: {body[:300]!r}", backend=self.url)
                ctype = resp.headers.get("Content-Type", "")
                return resp.status, (json.loads(body) if "json" in ctype else body)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(exc, f"{method} {path}") from exc

    # -- the websocket -----------------------------------------------------------------------
    def _ensure_ws(self) -> None:
        if self._ws_task is None or self._ws_task.done():
            self._ws_task = self._loop.create_task(self._ws_forever())

    async def _ws_forever(self) -> None:
        import aiohttp

        delay = 0.2
        ws_url = self.url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        while True:
            try:
                http = await self._session()
                async with http.ws_connect(ws_url, heartbeat=10,
                                           timeout=aiohttp.ClientWSTimeout(ws_close=self.timeout)) as ws:
                    self.ws_connected, delay = True, 0.2
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self._on_message(json.loads(msg.data))
                        elif msg.type == aiohttp.WSMsgType.BINARY:
                            self._on_binary(msg.data)
                        elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                            break
            except asyncio.CancelledError:
                self.ws_connected = False
                raise
            except Exception as exc:  # refused, reset, handshake failure: retry
                log.debug("websocket to %s: %s", self.url, exc)
            self.ws_connected = False
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _on_binary(self, data: bytes) -> None:
        if len(data) > 8 and struct.unpack(">I", data[:4])[0] == _PREVIEW_IMAGE and self._current:
            run = self._current
            run.previews.append(bytes(data[8:]))  # a JPEG or PNG
            node = run.executed[-1] if run.executed else ""
            run.emit(NodeProgress(run.local_id, node, *run.step, preview=bytes(data[8:])))

    def _on_message(self, msg: Mapping[str, Any]) -> None:
        kind, data = msg.get("type"), msg.get("data") or {}
        run = self._runs.get(str(data.get("prompt_id"))) if "prompt_id" in data else self._current
        if run is None:
            return
        pid = run.local_id
        if kind == "execution_start":
            self._current = run
            run.emit(RunStarted(pid, tuple(run.prompt)))
        elif kind == "execution_cached":
            for node in data.get("nodes", ()):
                run.cached.append(str(node))
                run.emit(NodeCached(pid, str(node), run.class_type(node)))
        elif kind == "executing":
            node = data.get("node")
            run.finish_previous()
            if node is None:
                run.done.set()
            else:
                self._current = run
                run.executed.append(str(node))
                run.started[str(node)] = time.perf_counter()
                run.emit(NodeStarted(pid, str(node), run.class_type(node), str(node)))
        elif kind == "progress":
            node = data.get("node") or (run.executed[-1] if run.executed else "")
            run.step = (float(data.get("value", 0)), float(data.get("max", 0)))
            run.emit(NodeProgress(pid, str(node), *run.step))
        elif kind == "executed":
            node = str(data.get("node"))
            seconds = time.perf_counter() - run.started.get(node, time.perf_counter())
            run.finished.add(node)
            run.emit(NodeFinished(pid, node, run.class_type(node), seconds, data.get("output")))
        elif kind in ("execution_error", "execution_interrupted", "execution_success"):
            run.done.set()

    # -- running a prompt --------------------------------------------------------------------
    def run_prompt(self, prompt: Mapping[str, Any], *, prompt_id: str | None = None,
                   extra_data: Mapping[str, Any] | None = None,
                   on_event: EventCallback | None = None) -> PromptResult:
        """Submit ``prompt`` to ``/prompt`` and wait for it (see the module doc)."""
        return self._call(self._run(prompt, prompt_id or uuid.uuid4().hex, extra_data, on_event))  # type: ignore[no-any-return]

    async def _run(self, prompt: Mapping[str, Any], local_id: str,
                   extra_data: Mapping[str, Any] | None, on_event: EventCallback | None) -> PromptResult:
        self._ensure_ws()
        for _ in range(20):  # give the websocket a moment, so that progress is not missed
            if self.ws_connected:
                break
            await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        body = {"prompt": dict(prompt), "client_id": self.client_id, "prompt_id": local_id,
                "extra_data": dict(extra_data or {})}
        status, answer = await self._request("POST", "/prompt", json=body)
        if status == 400 or not isinstance(answer, Mapping) or "prompt_id" not in answer:
            error = answer.get("error") if isinstance(answer, Mapping) else None
            if not isinstance(error, Mapping):
                error = {"type": "invalid_prompt", "message": str(error or answer), "details": "",
                         "extra_info": {}}
            node_errors = answer.get("node_errors") if isinstance(answer, Mapping) else None
            raise ValidationError(dict(error), dict(node_errors or {}))
        server_id = str(answer["prompt_id"])
        run = _Run(local_id, prompt, on_event)
        self._runs[server_id] = run
        try:
            entry = await self._wait(run, server_id)
        finally:
            self._runs.pop(server_id, None)
            if self._current is run:
                self._current = None
        return self._result(run, server_id, entry, time.perf_counter() - t0)

    async def _wait(self, run: _Run, server_id: str) -> Mapping[str, Any]:
        """Wait for the websocket's end signal or ``/history``; fail if the server goes silent."""
        last_answer = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.done.wait(), self.poll_interval)
            try:
                _, history = await self._request("GET", f"/history/{server_id}")
                last_answer = time.monotonic()
            except BackendError as exc:
                if time.monotonic() - last_answer > self.dead_after:
                    raise BackendError(
                        f"ComfyUI server at {self.url} stopped answering while prompt {run.local_id} "
                        f"ran (no answer for {self.dead_after:.0f} s; last error: {exc.__cause__}).\n"
                        "Fix: restart the server and run the prompt again; the session is still "
                        "usable.", backend=self.url, prompt_id=run.local_id) from None
                continue
            if isinstance(history, Mapping) and server_id in history:
                entry = history[server_id]
                status = entry.get("status") or {}
                if status.get("completed") or status.get("status_str") in ("success", "error"):
                    return entry  # type: ignore[no-any-return]
            run.done.clear()

    def _result(self, run: _Run, server_id: str, entry: Mapping[str, Any], seconds: float) -> PromptResult:
        status = entry.get("status") or {}
        messages = {kind: data for kind, data in status.get("messages", ())}
        pid = run.local_id
        if "execution_error" in messages:
            d = messages["execution_error"]
            node, cls = str(d.get("node_id")), str(d.get("node_type", run.class_type(d.get("node_id"))))
            original = RemoteNodeError(f"{d.get('exception_type', 'Exception')}: {d.get('exception_message', '')}")
            error = NodeExecutionError(node, cls, original, "".join(d.get("traceback", ())),
                                       prompt_id=pid)
            run.emit(NodeFailed(pid, node, cls, error))
            raise error
        if "execution_interrupted" in messages or status.get("status_str") == "error":
            d = messages.get("execution_interrupted", {})
            node = d.get("node_id")
            run.emit(RunInterrupted(pid, node, d.get("node_type"), frozenset(map(str, d.get("executed", ())))))
            raise ExecutionInterrupted(node, d.get("node_type"), prompt_id=pid)
        cached = set(run.cached) | set(map(str, (messages.get("execution_cached") or {}).get("nodes", ())))
        executed = (set(run.executed) - cached) or (set(entry.get("outputs", {})) - cached)
        result = PromptResult(prompt_id=pid, ui=dict(entry.get("outputs") or {}), executed=executed,
                              cached=cached, seconds=seconds)
        result.server_prompt_id = server_id  # type: ignore[attr-defined]
        result.previews = list(run.previews)  # type: ignore[attr-defined]
        run.emit(RunFinished(pid, frozenset(executed), frozenset(cached), seconds))
        return result

    # -- the rest of the protocol ------------------------------------------------------------
    def fetch(self, ref: ImageRef) -> bytes:
        """Download an output through ``/view``."""
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        return self._call(self._request("GET", "/view", params=params))[1]  # type: ignore[no-any-return]

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """``/object_info`` (all nodes) or ``/object_info/{node_class}``."""
        path = "/object_info" + (f"/{node_class}" if node_class else "")
        return self._call(self._request("GET", path))[1]  # type: ignore[no-any-return]

    def interrupt(self) -> None:
        self._call(self._request("POST", "/interrupt"))

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        self._call(self._request("POST", "/free", json={"unload_models": unload_models,
                                                        "free_memory": free_memory}))

    def queue_info(self) -> dict[str, Any]:
        """The server's ``/queue`` (running and pending prompts)."""
        return self._call(self._request("GET", "/queue"))[1]  # type: ignore[no-any-return]

    def attach(self, session: Any) -> None:
        """Register the server's nodes (from ``/object_info``) in ``session``'s registry, so that
        validation, enums and stubs reflect the server's nodes and model lists."""
        from comfy_notebook.backends.remote_nodes import node_classes

        session.register(node_classes(self.object_info(), self.url))

    def close(self) -> None:
        """Close the websocket and HTTP session and stop the client thread."""
        if self._loop.is_closed():
            return

        async def shutdown() -> None:
            if self._ws_task is not None:
                self._ws_task.cancel()
            if self._http is not None:
                await self._http.close()

        try:
            self._call(shutdown(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __repr__(self) -> str:
        state = "connected" if self.ws_connected else "not connected"
        return f"ComfyUIServer({self.url!r}, {state})"
