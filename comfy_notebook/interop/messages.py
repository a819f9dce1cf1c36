"""Where a custom pack's front-end messages go (``PromptServer.instance.send_sync``)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def publish(event: str, data: Any) -> None:
    """Emit ``(event, data)`` as a ``NodeMessage`` of the running node; outside a run, log it."""
    from comfy_notebook.engine import current_context

    ctx = current_context()
    if ctx.node_id is None:
        log.info("message %r outside a run: %r", event, data)
        return
    ctx.message(event, data)
