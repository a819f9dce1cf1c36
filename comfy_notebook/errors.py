"""One exception hierarchy for comfy_notebook.

Every error that concerns a node names the node id, the input, what was expected, what
arrived and how to fix it.  Nothing here imports torch.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendError",
    "ComfyNotebookError",
    "ExecutionInterrupted",
    "GraphError",
    "ModelLoadError",
    "ModelMemoryError",
    "NodeCallError",
    "NodeError",
    "NodeExecutionError",
    "OutputWriteError",
    "TemplateError",
    "UnsupportedModelError",
    "ValidationError",
]


class ComfyNotebookError(Exception):
    """Base class of every error raised by comfy_notebook."""


class GraphError(ComfyNotebookError):
    """A graph or API prompt is malformed (bad JSON shape, duplicate ids, cycles)."""


class NodeError(ComfyNotebookError):
    """An error about one node's input.

    Parameters
    ----------
    message:
        What went wrong, in one sentence.
    node_id, node_type, input_name:
        Where it went wrong.
    expected, received:
        What the input should have been, and what arrived.
    fix:
        How to fix it.
    """

    def __init__(
        self,
        message: str,
        *,
        node_id: str | None = None,
        node_type: str | None = None,
        input_name: str | None = None,
        expected: Any = None,
        received: Any = None,
        fix: str | None = None,
    ) -> None:
        self.message = message
        self.node_id = node_id
        self.node_type = node_type
        self.input_name = input_name
        self.expected = expected
        self.received = received
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(f"node {self.node_id}")
        if self.node_type is not None:
            where.append(f"({self.node_type})")
        if self.input_name is not None:
            where.append(f"input '{self.input_name}'")
        text = (" ".join(where) + ": " if where else "") + self.message
        if self.expected is not None:
            text += f"; expected {self.expected}"
        if self.received is not None:
            text += f", received {_short(self.received)}"
        if self.fix:
            text += f". Fix: {self.fix}"
        return text


class NodeCallError(NodeError):
    """A real-mode node call failed validation or raised; ``traceback_text`` has the details;
    ``images`` the images a failed save kept (see :class:`OutputWriteError`)."""

    traceback_text: str = ""
    images: Any = None


class OutputWriteError(NodeError):
    """An output file could not be written (disk full, read-only or vanished folder).

    ``images`` holds what was to be saved (the node's ``IMAGE`` input), so the notebook still
    shows it and a script can keep it; ``saved`` lists the files written before the failure
    (ComfyUI's ``{"filename", "subfolder", "type"}``); ``path`` is the file that failed.
    """

    def __init__(self, message: str, *, images: Any = None, saved: list[dict[str, Any]] | None = None,
                 path: str | None = None, **kwargs: Any) -> None:
        self.images = images
        self.saved = list(saved or [])
        self.path = path
        super().__init__(message, **kwargs)


class ValidationError(ComfyNotebookError):
    """A prompt failed validation.

    ``error`` is the prompt-level error dict (ComfyUI's ``{"type", "message", "details",
    "extra_info"}``) and ``node_errors`` has ComfyUI's per-node shape:
    ``{node_id: {"errors": [...], "dependent_outputs": [...], "class_type": str}}``.
    """

    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any]) -> None:
        self.error = error
        self.node_errors = node_errors
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [f"{self.error.get('message', 'Prompt failed validation')}"]
        if self.error.get("details"):
            lines[0] += f": {self.error['details']}"
        for node_id, entry in self.node_errors.items():
            for err in entry.get("errors", []):
                extra = err.get("extra_info", {})
                inp = extra.get("input_name")
                where = f"node {node_id} ({entry.get('class_type')})"
                if inp:
                    where += f" input '{inp}'"
                detail = f": {err['details']}" if err.get("details") else ""
                lines.append(f"  {where}: {err.get('message')}{detail}")
        return "\n".join(lines)


class NodeExecutionError(ComfyNotebookError):
    """A node's function raised.  The original exception is ``__cause__`` and ``original``."""

    def __init__(
        self,
        node_id: str,
        node_type: str,
        original: BaseException,
        traceback_text: str = "",
        inputs_summary: dict[str, str] | None = None,
        *,
        prompt_id: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.prompt_id = prompt_id
        self.node_type = node_type
        self.original = original
        self.traceback_text = traceback_text
        self.inputs_summary = inputs_summary or {}
        super().__init__(
            f"node {node_id} ({node_type}) failed: {type(original).__name__}: {original}"
        )


class ExecutionInterrupted(KeyboardInterrupt):
    """A run was interrupted (Jupyter interrupt, ``session.interrupt()``, widget button).

    A :class:`KeyboardInterrupt`, not an :class:`Exception`: an interrupt is the user stopping
    their code, not a node failing, so ``except Exception`` in a sweep loop does not swallow
    it and the loop stops.  (So it is not a :class:`ComfyNotebookError` either.)
    """

    def __init__(
        self,
        node_id: str | None = None,
        node_type: str | None = None,
        step: int | None = None,
        total: int | None = None,
        *,
        prompt_id: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.node_type = node_type
        self.prompt_id = prompt_id
        self.step = step
        self.total = total
        stepped = step is not None and total is not None
        where = f" at step {step}/{total}" if stepped else ""
        if node_id is not None:
            where += (" of" if stepped else " in") + f" node {node_id}"
            where += f" ({node_type})" if node_type else ""
        super().__init__(f"interrupted{where}")


class TemplateError(ComfyNotebookError):
    """A workflow template did not render (undefined variable, syntax) or rendered bad JSON.

    ``line`` is the template line (1-based) and ``variable`` the name that was undefined, where
    known.
    """

    def __init__(self, message: str, *, line: int | None = None, variable: str | None = None,
                 source: str | None = None) -> None:
        self.line = line
        self.variable = variable
        self.source = source
        super().__init__(message)


class BackendError(ComfyNotebookError):
    """A backend (a ComfyUI server, a Ray worker) failed or stopped answering.

    ``backend`` names it (e.g. the server's address) and ``prompt_id`` the prompt it was running.
    """

    def __init__(self, message: str, *, backend: str | None = None, prompt_id: str | None = None) -> None:
        self.backend = backend
        self.prompt_id = prompt_id
        super().__init__(message)


class ModelLoadError(ComfyNotebookError):
    """A checkpoint or model file could not be read or does not match an architecture."""


class UnsupportedModelError(ModelLoadError):
    """The file is a recognised model family that is not supported yet, or is unknown."""


class ModelMemoryError(ComfyNotebookError):
    """The device ran out of memory even after offloading and partial loading."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({type(value).__name__})"
