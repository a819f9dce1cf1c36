"""The execution engine: standard library only (importing it never imports torch).

Node classes follow ComfyUI's V1 protocol; graphs are frozen dataclasses with API-format JSON
in and out; validation reports ComfyUI's error types; the executor caches by structural
signature and emits typed events.
"""

from __future__ import annotations

from comfy_notebook.engine.cache import (
    LRU,
    ByteBudget,
    Cache,
    CacheEntry,
    CachePolicy,
    CacheStats,
    KeepAll,
    MemoryBudget,
    node_signature,
    sizeof,
)
from comfy_notebook.engine.context import NodeContext, current_context
from comfy_notebook.engine.events import (
    Event,
    NodeBlocked,
    NodeCached,
    NodeFailed,
    NodeFinished,
    NodeProgress,
    NodeStarted,
    NodeWarning,
    RunFinished,
    RunInterrupted,
    RunStarted,
)
from comfy_notebook.engine.executor import DynamicPrompt, Executor, PromptResult
from comfy_notebook.engine.graph import (
    BadLink,
    ExecutionBlocker,
    Graph,
    GraphBuilder,
    Link,
    Node,
    NodeRef,
    is_link,
)
from comfy_notebook.engine.protocol import InputSpec, NodeSpec, parse_node_class
from comfy_notebook.engine.registry import Registry
from comfy_notebook.engine.validate import Validated, validate, validate_node_input

__all__ = [
    "LRU",
    "BadLink",
    "ByteBudget",
    "Cache",
    "CacheEntry",
    "CachePolicy",
    "CacheStats",
    "DynamicPrompt",
    "Event",
    "ExecutionBlocker",
    "Executor",
    "Graph",
    "GraphBuilder",
    "InputSpec",
    "KeepAll",
    "Link",
    "MemoryBudget",
    "Node",
    "NodeBlocked",
    "NodeCached",
    "NodeContext",
    "NodeFailed",
    "NodeFinished",
    "NodeProgress",
    "NodeRef",
    "NodeSpec",
    "NodeStarted",
    "NodeWarning",
    "PromptResult",
    "Registry",
    "RunFinished",
    "RunInterrupted",
    "RunStarted",
    "Validated",
    "current_context",
    "is_link",
    "node_signature",
    "parse_node_class",
    "sizeof",
    "validate",
    "validate_node_input",
]
