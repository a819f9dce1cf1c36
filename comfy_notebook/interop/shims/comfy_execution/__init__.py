"""``comfy_execution.graph_utils`` (GraphBuilder, ExecutionBlocker) for custom node packs."""
