"""Real mode: node calls that run at once, their handles, and virtual mode (``Workflow``).

The room, module by module:

- :mod:`~comfy_notebook.realmode.calls`: ``node_function`` / ``call``, :class:`Handle`;
- :mod:`~comfy_notebook.realmode.state`: per-session bookkeeping (plans, cell scoping,
  ``begin_cell`` / ``end_cell``);
- :mod:`~comfy_notebook.realmode.recording`: the graph behind handles, ``Workflow``, API export;
- :mod:`~comfy_notebook.realmode.binding`: arguments -> node inputs;
- :mod:`~comfy_notebook.realmode.fingerprint`: content keys of raw values (tensors, arrays);
- :mod:`~comfy_notebook.realmode.display`: how handles show in a notebook;
- :mod:`~comfy_notebook.realmode.progress`: tqdm bars while nodes run;
- :mod:`~comfy_notebook.realmode.history`: the images each cell (and the session) made;
- :mod:`~comfy_notebook.realmode.enums`: ``Checkpoints``, ``Samplers``, ... for completion;
- :mod:`~comfy_notebook.realmode.stubs`: ``.pyi`` stubs of the session's nodes;
- :mod:`~comfy_notebook.realmode.namespace`: what ``from comfy_notebook.nodes import *`` gives.
"""

from __future__ import annotations

from comfy_notebook.errors import NodeCallError
from comfy_notebook.realmode.calls import Handle, NodeFunction, call, node_function
from comfy_notebook.realmode.history import NoCellError
from comfy_notebook.realmode.recording import (
    RAW_VALUE_NODE,
    NodeOutput,
    RecordedNode,
    Workflow,
    to_api,
)
from comfy_notebook.realmode.state import begin_cell, cell_runs, end_cell, recent_images, state

__all__ = [
    "RAW_VALUE_NODE",
    "Handle",
    "NoCellError",
    "NodeCallError",
    "NodeFunction",
    "NodeOutput",
    "RecordedNode",
    "Workflow",
    "begin_cell",
    "call",
    "cell_runs",
    "end_cell",
    "node_function",
    "recent_images",
    "state",
    "to_api",
]
