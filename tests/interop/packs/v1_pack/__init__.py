"""A pure-protocol V1 pack: standard types only (IMAGE, MASK, INT, STRING)."""

import torch


class SolidImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 8, "min": 1, "max": 64}),
                             "height": ("INT", {"default": 8, "min": 1, "max": 64}),
                             "value": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "test/v1"

    def make(self, width, height, value):
        return (torch.full((1, height, width, 3), value),)


class InvertImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "invert"
    CATEGORY = "test/v1"

    def invert(self, image):
        out = 1.0 - image
        return (out, out[..., 0])


NODE_CLASS_MAPPINGS = {"TestSolidImage": SolidImage, "TestInvertImage": InvertImage}
NODE_DISPLAY_NAME_MAPPINGS = {"TestSolidImage": "Solid image (test)"}
WEB_DIRECTORY = "./js"
