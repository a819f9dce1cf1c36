"""``RunState``: the evented state of the current run, fed by the session's event stream.

Widgets (``RunView``) are views over this object; nothing else writes it.  It follows
``comfy_notebook.engine.events`` exactly: per node ``pending`` / ``cached`` / ``running`` /
``done`` / ``failed`` / ``interrupted`` / ``skipped`` (not needed: its consumers were cached), the progress of the running node, a latent->RGB preview every
``preview_every`` steps, and the elapsed time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import traitlets

from comfy_notebook.engine import events as ev

__all__ = ["RunState", "preview_data_url"]


def preview_data_url(preview: Any, max_size: int = 256) -> str:
    """PNG data URL of a progress preview: a latent ``[B,C,h,w]`` / LATENT dict (its ``latent_format``,
    when given, picks the preview factors), an IMAGE or a PIL image."""
    from comfy_notebook.widgets._images import data_url, to_images
    from comfy_notebook.widgets.preview import latent_preview

    if isinstance(preview, bytes | bytearray):  # an encoded preview (a ComfyUI server's frames)
        import base64

        mime = "image/png" if bytes(preview[:8]) == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        return f"data:{mime};base64,{base64.b64encode(bytes(preview)).decode('ascii')}"
    samples = preview.get("samples") if isinstance(preview, dict) else preview
    fmt = preview.get("latent_format") if isinstance(preview, dict) else None
    channels = getattr(fmt, "channels", 4)
    shape = getattr(samples, "shape", None)
    # a channels-first latent [B,C,h,w]; an IMAGE is channels-last with C = 1 or 3
    if shape is not None and len(shape) in (3, 4) and shape[-3] == channels and shape[-1] not in (1, 3):
        preview = latent_preview(samples, max_size=max_size, latent_format=fmt)
    return data_url(to_images(preview)[0], max_size=max_size)


class RunState(traitlets.HasTraits):
    """State of the latest run, updated by :meth:`apply` from engine events.

    Parameters
    ----------
    preview_every:
        Render the progress preview every this many steps (and at the last step).
    clock:
        Time source (seconds); tests pass a fake one.
    """

    prompt_id = traitlets.Unicode("")
    status = traitlets.Unicode("idle")  # idle | running | finished | failed | interrupted
    nodes = traitlets.Dict()  # node_id -> {"class_type", "status", "seconds"}
    current_node = traitlets.Unicode("")
    value = traitlets.Float(0.0)
    total = traitlets.Float(0.0)
    preview = traitlets.Unicode("")  # PNG data URL
    elapsed = traitlets.Float(0.0)
    error = traitlets.Unicode("")

    def __init__(self, *, preview_every: int = 3, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.preview_every = max(1, int(preview_every))
        self._clock = clock
        self._t0 = 0.0

    def attach(self, session: Any) -> Callable[[], None]:
        """Subscribe to ``session``'s events; returns the unsubscribe callable."""
        unsubscribe: Callable[[], None] = session.subscribe(self.apply)
        return unsubscribe

    def _set_node(self, node_id: str, **fields: Any) -> None:
        """Replace the node entry (a new dict, so observers fire)."""
        nodes = dict(self.nodes)
        nodes[node_id] = {**nodes.get(node_id, {"class_type": "", "seconds": None}), **fields}
        self.nodes = nodes

    def apply(self, event: Any) -> None:
        """Fold one engine event into the state."""
        if isinstance(event, ev.RunStarted):
            self._t0 = self._clock()
            with self.hold_trait_notifications():
                self.prompt_id, self.status, self.error = event.prompt_id, "running", ""
                self.nodes = {n: {"class_type": "", "status": "pending", "seconds": None}
                              for n in event.node_ids}
                self.current_node, self.value, self.total, self.preview = "", 0.0, 0.0, ""
                self.elapsed = 0.0
            return
        if self.status == "running":
            self.elapsed = self._clock() - self._t0
        if isinstance(event, ev.NodeCached):
            self._set_node(event.node_id, class_type=event.class_type, status="cached")
        elif isinstance(event, ev.NodeStarted):
            self._set_node(event.node_id, class_type=event.class_type, status="running")
            with self.hold_trait_notifications():
                self.current_node, self.value, self.total = event.node_id, 0.0, 0.0
        elif isinstance(event, ev.NodeProgress):
            with self.hold_trait_notifications():
                self.current_node, self.value, self.total = event.node_id, event.value, event.total
            step = int(event.value)
            if event.preview is not None and (step % self.preview_every == 0
                                              or event.value >= event.total):
                self.preview = preview_data_url(event.preview)
        elif isinstance(event, ev.NodeFinished):
            self._set_node(event.node_id, class_type=event.class_type, status="done",
                           seconds=event.seconds)
        elif isinstance(event, ev.NodeBlocked):
            self._set_node(event.node_id, class_type=event.class_type, status="blocked")
        elif isinstance(event, ev.NodeFailed):
            self._set_node(event.node_id, class_type=event.class_type, status="failed")
            with self.hold_trait_notifications():
                self.status, self.error = "failed", str(event.error)
        elif isinstance(event, ev.RunInterrupted):
            if event.node_id is not None:
                self._set_node(event.node_id, status="interrupted")
            with self.hold_trait_notifications():
                self.status = "interrupted"
                self.error = f"interrupted at step {int(self.value)}/{int(self.total)}" \
                    if self.total else "interrupted"
        elif isinstance(event, ev.RunFinished):
            with self.hold_trait_notifications():
                # scheduled but never needed (their consumers came from the cache)
                self.nodes = {n: {**e, "status": "skipped"} if e["status"] == "pending" else e
                              for n, e in self.nodes.items()}
                self.status, self.elapsed, self.current_node = "finished", event.seconds, ""

    def counts(self) -> dict[str, int]:
        """Number of nodes per status."""
        out: dict[str, int] = {}
        for entry in self.nodes.values():
            out[entry["status"]] = out.get(entry["status"], 0) + 1
        return out

    def text(self) -> str:
        """One-screen plain-text summary."""
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items()))
        lines = [f"run {self.prompt_id or '-'}: {self.status}, {self.elapsed:.2f} s ({counts})"]
        if self.status == "running" and self.total:
            lines.append(f"  node {self.current_node}: step {int(self.value)}/{int(self.total)}")
        for node_id, entry in self.nodes.items():
            secs = f" {entry['seconds']:.3f} s" if entry.get("seconds") is not None else ""
            lines.append(f"  {node_id:>6} {entry['class_type']:<24} {entry['status']}{secs}")
        if self.error:
            lines.append(f"  {self.error}")
        return "\n".join(lines)
