"""TEST FIXTURE: written as ``torchvision/__init__.py`` on the ComfyUI server's path only.

The vendored ComfyUI imports torchvision at module level for Stable Cascade (never used here);
torchvision's public wheels require a CUDA torch, so the test server gets this empty module.
"""
