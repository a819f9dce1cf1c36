"""A pack that needs ComfyUI itself (imports comfy.model_management at import time)."""

import comfy.model_management  # noqa: F401

NODE_CLASS_MAPPINGS = {}
