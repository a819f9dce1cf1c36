"""Calling one node: its input lists, hidden inputs, list mapping, blockers and the node context.

ComfyUI calls a node function once per list index (shorter lists repeat their last item), or
once with whole lists for ``INPUT_IS_LIST`` nodes; an :class:`ExecutionBlocker` among the
inputs of a call replaces that call's result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from comfy_notebook.engine._value_kinds import tensor_problem
from comfy_notebook.engine.context import _CURRENT, NodeContext
from comfy_notebook.engine.events import NodeBlocked
from comfy_notebook.engine.graph import ExecutionBlocker, Graph, Link, Node
from comfy_notebook.engine.protocol import NodeSpec
from comfy_notebook.errors import ExecutionInterrupted, NodeError

if TYPE_CHECKING:
    from comfy_notebook.engine._run import PromptRun

__all__ = ["DynamicPrompt", "gather_inputs", "hidden_value", "instance", "map_call", "summarize_inputs"]


class DynamicPrompt:
    """The (possibly expanded) graph of a run, handed to ``DYNPROMPT`` hidden inputs."""

    def __init__(self, run: PromptRun) -> None:
        self._run = run

    @property
    def graph(self) -> Graph:
        """Every node of the run so far, including expanded ones."""
        return Graph(dict(self._run.nodes))

    def get_node(self, node_id: str) -> dict[str, Any]:
        """A node in API format (raises ``KeyError`` when absent)."""
        return self._run.nodes[node_id].to_api()

    def has_node(self, node_id: str) -> bool:
        """Whether the node exists in the run."""
        return node_id in self._run.nodes

    def all_node_ids(self) -> list[str]:
        """Every node id of the run."""
        return list(self._run.nodes)

    def get_original_prompt(self) -> dict[str, Any]:
        """The API-format prompt as submitted."""
        return self._run.prompt_api()

    def get_parent_node_id(self, node_id: str) -> str | None:
        """The expanding node of an expanded node, else ``None``."""
        return self._run.parents.get(node_id)

    def get_display_node_id(self, node_id: str) -> str:
        """The node of the submitted prompt that an expanded node is shown as."""
        return self._run.display.get(node_id, node_id)

    def get_real_node_id(self, node_id: str) -> str:
        """Same as :meth:`get_display_node_id` (ComfyUI name)."""
        return self.get_display_node_id(node_id)


def summarize_inputs(inputs: Mapping[str, list[Any]]) -> dict[str, str]:
    """Short reprs of a node's inputs, for :class:`NodeExecutionError`."""
    out = {}
    for name, values in inputs.items():
        text = repr(values[0] if len(values) == 1 else values)
        out[name] = text if len(text) <= 120 else text[:117] + "..."
    return out


def hidden_value(run: PromptRun, node_id: str, kind: str) -> Any:
    """Value of a hidden input."""
    if kind == "PROMPT":
        return run.prompt_api()
    if kind == "UNIQUE_ID":
        return node_id
    if kind == "EXTRA_PNGINFO":
        return run.extra_data.get("extra_pnginfo")
    if kind == "DYNPROMPT":
        return DynamicPrompt(run)
    if kind == "AUTH_TOKEN_COMFY_ORG":
        return run.extra_data.get("auth_token_comfy_org")
    if kind == "API_KEY_COMFY_ORG":
        return run.extra_data.get("api_key_comfy_org")
    return None


def gather_inputs(run: PromptRun, node_id: str, node: Node, spec: NodeSpec) -> dict[str, list[Any]]:
    """Input lists for a call: links resolved, missing ones ``[None]``, hidden filled."""
    inputs: dict[str, list[Any]] = {}
    values = run.values
    for name, value in node.inputs.items():
        ispec = spec.inputs.get(name)
        if isinstance(value, Link):
            if ispec is not None and ispec.raw_link:
                inputs[name] = [value.to_api()]
                continue
            out = values.get(value.node_id)
            if out is None or value.output >= len(out):
                inputs[name] = [None]
            else:
                inputs[name] = out[value.output]
                if ispec is not None:
                    _check_tensor_kinds(node_id, spec.name, name, ispec.type, inputs[name])
        elif ispec is not None:
            inputs[name] = [value]
    for name, kind in spec.hidden.items():
        inputs[name] = [hidden_value(run, node_id, kind)]
    return inputs


def _check_tensor_kinds(node_id: str, node_type: str, name: str, typ: Any, values: list[Any]) -> None:
    """Refuse an IMAGE / MASK / LATENT of the wrong shape before the node sees it."""
    if typ not in ("IMAGE", "MASK", "LATENT"):
        return
    for value in values:
        problem = tensor_problem(typ, value, tensors_only=True)
        if problem is not None:
            expected, received, fix = problem
            raise NodeError(f"wrong {typ} value: {received}", node_id=node_id, node_type=node_type,
                            input_name=name, expected=expected, fix=fix)


def instance(objects: dict[tuple[str, str], Any], node_id: str, spec: NodeSpec) -> Any:
    """The node object (one per node id and class, kept in ``objects`` across runs)."""
    key = (node_id, spec.name)
    obj = objects.get(key)
    if obj is None:
        obj = spec.cls()
        objects[key] = obj
    return obj


def _calls(inputs: dict[str, list[Any]], spec: NodeSpec) -> list[dict[str, Any]]:
    """The keyword arguments of each call (list mapping)."""
    if spec.input_is_list:
        return [inputs]
    if not inputs:
        return [{}]
    lengths = [len(v) for v in inputs.values()]
    n = 0 if min(lengths) == 0 else max(lengths)
    return [{k: v[i] if i < len(v) else v[-1] for k, v in inputs.items()} for i in range(n)]


async def map_call(
    run: PromptRun, fn: Callable[..., Any], inputs: dict[str, list[Any]], spec: NodeSpec, ctx: NodeContext
) -> list[Any]:
    """Call ``fn`` once per list index (or once with whole lists for INPUT_IS_LIST)."""
    results: list[Any] = []
    for index, kwargs in enumerate(_calls(inputs, spec)):
        ctx.check_interrupt()
        block = None
        for value in kwargs.values():
            if spec.input_is_list:
                value = next((e for e in value if isinstance(e, ExecutionBlocker)), value)
            if isinstance(value, ExecutionBlocker):
                block = value
                break
        if block is not None:
            if block.message is not None:
                run.emit(NodeBlocked(run.prompt_id, ctx.node_id or "", spec.name, block.message))
                block = ExecutionBlocker(None)
            results.append(block)
            continue
        ctx.call_index = index
        token = _CURRENT.set(ctx)
        try:
            result = fn(**kwargs)
            if asyncio.iscoroutine(result):
                result = await result
        except KeyboardInterrupt:
            step, total = ctx.last_step if ctx.last_step else (None, None)
            raise ExecutionInterrupted(
                node_id=ctx.node_id,
                node_type=spec.name,
                step=None if step is None else int(step),
                total=None if total is None else int(total),
            ) from None
        finally:
            _CURRENT.reset(token)
        results.append(result)
    return results
