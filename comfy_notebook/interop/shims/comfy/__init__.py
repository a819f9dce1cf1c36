"""Only ``comfy.utils`` (ProgressBar and friends) is provided for custom node packs.

Packs that import ``comfy.model_management``, ``comfy.model_patcher``, ``comfy.sd`` or
``comfy.ldm`` need ComfyUI itself: attach one with ``Session(comfyui=PATH)``.
"""
