"""ComfyUIServer's client side without a ComfyUI: headers on every request and on the websocket
handshake, a 400 from /prompt as our ValidationError, and an unreachable address failing fast.
(The real-server behaviour is in test_comfyui_server.py.)"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from comfy_notebook.backends import ComfyUIServer
from comfy_notebook.errors import BackendError, ValidationError

aiohttp_web = pytest.importorskip("aiohttp.web")


@pytest.fixture
def little_server() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """An aiohttp app answering /object_info, /ws and /prompt (400) and recording headers."""
    seen: list[tuple[str, str | None]] = []

    async def object_info(request: Any) -> Any:
        seen.append((request.path, request.headers.get("Authorization")))
        return aiohttp_web.json_response({"KSampler": {"input": {}, "output": ["LATENT"]}})

    async def ws(request: Any) -> Any:
        seen.append((request.path, request.headers.get("Authorization")))
        sock = aiohttp_web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_json({"type": "status", "data": {"status": {}}})
        async for _ in sock:
            pass
        return sock

    async def prompt(request: Any) -> Any:
        seen.append((request.path, request.headers.get("Authorization")))
        error = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                 "details": "", "extra_info": {}}
        node_errors = {"4": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                         "details": "ckpt_name: 'x' not in []", "extra_info": {}}],
                             "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}}
        return aiohttp_web.json_response({"error": error, "node_errors": node_errors}, status=400)

    app = aiohttp_web.Application()
    app.router.add_get("/object_info", object_info)
    app.router.add_get("/ws", ws)
    app.router.add_post("/prompt", prompt)
    loop = asyncio.new_event_loop()
    runner = aiohttp_web.AppRunner(app)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(aiohttp_web.TCPSite(runner, "127.0.0.1", port).start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    time.sleep(0.3)
    yield f"http://127.0.0.1:{port}", seen
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_headers_go_with_every_request_and_the_websocket(little_server: Any) -> None:
    url, seen = little_server
    server = ComfyUIServer(url, headers={"Authorization": "Bearer secret"})
    try:
        assert "KSampler" in server.object_info()
        with pytest.raises(ValidationError) as info:
            server.run_prompt({"9": {"class_type": "SaveImage", "inputs": {}}})
        assert info.value.node_errors["4"]["class_type"] == "CheckpointLoaderSimple"
        assert "ckpt_name" in str(info.value)
        paths = {path for path, _ in seen}
        assert {"/object_info", "/ws", "/prompt"} <= paths
        assert all(auth == "Bearer secret" for _, auth in seen)
    finally:
        server.close()


def test_an_unreachable_server_fails_fast_with_a_fix() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    server = ComfyUIServer(f"127.0.0.1:{port}", timeout=5)
    try:
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="did not answer") as info:
            server.run_prompt({"1": {"class_type": "X", "inputs": {}}})
        assert time.monotonic() - t0 < 10 and "Fix:" in str(info.value)
        assert server.url == f"http://127.0.0.1:{port}"
    finally:
        server.close()
