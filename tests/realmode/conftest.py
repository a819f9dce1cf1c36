"""A small test node pack shaped like the SD text-to-image nodes, and a fresh session per test."""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import pytest

CALLS: list[str] = []


class Loader:
    """CheckpointLoaderSimple stand-in: three outputs."""

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"ckpt_name": (["a.safetensors", "b.safetensors"],)}}

    def load(self, ckpt_name: str) -> tuple[Any, ...]:
        CALLS.append("Loader")
        return ({"model": ckpt_name}, {"clip": ckpt_name}, {"vae": ckpt_name})


class Encode:
    """CLIPTextEncode stand-in."""

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}}

    def encode(self, text: str, clip: Any) -> tuple[Any]:
        import torch

        CALLS.append("Encode")
        return ([[torch.full((1, 2), float(len(text))), {"text": text}]],)


class Empty:
    """EmptyLatentImage stand-in."""

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"width": ("INT", {"default": 16, "min": 8, "max": 64}),
                             "height": ("INT", {"default": 16, "min": 8, "max": 64}),
                             "batch_size": ("INT", {"default": 1, "min": 1})}}

    def make(self, width: int, height: int, batch_size: int) -> tuple[Any]:
        import torch

        CALLS.append("Empty")
        return ({"samples": torch.zeros(batch_size, 4, height // 8, width // 8)},)


class Sampler:
    """KSampler stand-in: reports progress per step, checks interrupts, bool combo input."""

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "seed": ("INT", {"default": 0}),
                             "steps": ("INT", {"default": 3, "min": 1}),
                             "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "latent_image": ("LATENT",)},
                "optional": {"add_noise": (["enable", "disable"],),
                             "sampler_name": (["euler", "heun"], {"default": "euler"})}}

    def sample(self, model: Any, seed: int, steps: int, positive: Any, negative: Any,
               latent_image: Any, add_noise: str = "enable", sampler_name: str = "euler") -> tuple[Any]:
        import torch

        from comfy_notebook.engine import current_context

        CALLS.append("Sampler")
        ctx = current_context()
        x = latent_image["samples"].clone()
        g = torch.Generator().manual_seed(seed)
        for i in range(steps):
            if add_noise == "enable":
                x = x + torch.randn(x.shape, generator=g) * 0.1
            x = x + positive[0][0].mean() * 0.01
            ctx.progress(i + 1, steps)
        return ({"samples": x},)


class Decode:
    """VAEDecode stand-in: [B,H,W,3] in 0..1."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    def decode(self, samples: Any, vae: Any) -> tuple[Any]:
        CALLS.append("Decode")
        s = samples["samples"]  # [B,4,h,w]
        img = s[:, :3].permute(0, 2, 3, 1).repeat_interleave(8, 1).repeat_interleave(8, 2)
        return ((img.sigmoid()),)


class Save:
    """SaveImage stand-in: output node with hidden PROMPT."""

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    SAVED: ClassVar[list[Any]] = []

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "x"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, images: Any, filename_prefix: str, prompt: Any = None, extra_pnginfo: Any = None) -> dict[str, Any]:
        CALLS.append("Save")
        Save.SAVED.append({"prompt": prompt, "images": images})
        return {"ui": {"images": [{"filename": f"{filename_prefix}_{len(Save.SAVED)}.png"}]}}


class Scale:
    """An IMAGE -> IMAGE node that fails on a negative factor."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "scale"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",), "factor": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0})}}

    def scale(self, image: Any, factor: float) -> tuple[Any]:
        CALLS.append("Scale")
        if factor < 0:
            raise ValueError("factor must not be negative")
        return (image * factor,)


class Changing:
    """IS_CHANGED returns NaN: reruns every time."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"x": ("INT", {"default": 1})}}

    @classmethod
    def IS_CHANGED(cls, x: int) -> float:
        return float("nan")

    def run(self, x: int) -> tuple[int]:
        CALLS.append("Changing")
        return (x + 1,)


class Interrupting:
    """Reports step 1 and 2 of 5, then gets a KeyboardInterrupt (Jupyter's interrupt)."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    ARMED: ClassVar[list[bool]] = [True]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"x": ("INT", {"default": 1})}}

    def run(self, x: int) -> tuple[int]:
        from comfy_notebook.engine import current_context

        CALLS.append("Interrupting")
        ctx = current_context()
        for i in range(5):
            ctx.progress(i + 1, 5)
            if i == 1 and Interrupting.ARMED[0]:
                raise KeyboardInterrupt
        return (x,)


class Summarised:
    """A value with its own summary() line (like MODEL/CLIP/VAE)."""

    def summary(self) -> str:
        return "SD1 UNet fp16 on cuda:0, 1.7 GB"


class MakeModel:
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {}}

    def run(self) -> tuple[Any]:
        return (Summarised(),)


PACK = {"Interrupting": Interrupting, "MakeModel": MakeModel, "Loader": Loader, "Encode": Encode, "Empty": Empty, "Sampler": Sampler,
        "Decode": Decode, "Save": Save, "Scale": Scale, "Changing": Changing}


class Ckpt(enum.Enum):
    a = "a.safetensors"
    b = "b.safetensors"


@pytest.fixture
def session(make_current_session):
    """A fresh current session with the test pack; progress bars off."""
    s = make_current_session(PACK)
    CALLS.clear()
    Save.SAVED.clear()
    return s


@pytest.fixture
def calls() -> list[str]:
    return CALLS


@pytest.fixture
def nodes(session):
    """The real-mode callables of the pack, by name."""
    from types import SimpleNamespace

    from comfy_notebook.realmode import node_function

    return SimpleNamespace(**{name: node_function(name) for name in PACK})


def text_to_image(n: Any, seed: int = 42, ckpt: Any = "a.safetensors") -> Any:
    """The 7-call text-to-image cell."""
    model, clip, vae = n.Loader(ckpt)
    pos = n.Encode("a bottle", clip)
    neg = n.Encode("text", clip)
    latent = n.Sampler(model, seed, 3, pos, neg, n.Empty(16, 16, 1))
    image = n.Decode(latent, vae)
    n.Save(image, "bottle")
    return image


@pytest.fixture
def t2i():
    return text_to_image


@pytest.fixture
def ckpt_enum() -> type[enum.Enum]:
    return Ckpt
