"""Our own testing node pack, modelled on ComfyUI's tests/execution/testing-pack behaviours.

Images are ``Img(value, height, width)`` (a grey level in 0..1), so the engine tests need no
torch.  Every node records its calls in ``CALLS`` so tests can assert what ran.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from comfy_notebook._session import Session
from comfy_notebook.engine import ExecutionBlocker, GraphBuilder


@dataclass(frozen=True)
class Img:
    """A stand-in image: one grey level."""

    value: float
    height: int = 8
    width: int = 8

    @property
    def nbytes(self) -> int:
        return self.height * self.width * 4


class AnyType(str):
    """ComfyUI's wildcard hack: a str subclass that never differs."""

    def __ne__(self, other: object) -> bool:
        return False


ANY = AnyType("*")
CALLS: list[str] = []


class StubImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"content": (["WHITE", "BLACK", "NOISE"],), "height": ("INT", {"default": 8, "min": 1, "max": 4096}),
                             "width": ("INT", {"default": 8, "min": 1}), "batch_size": ("INT", {"default": 1, "min": 1})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "stub"
    CATEGORY = "Testing/Stub Nodes"

    def stub(self, content, height, width, batch_size):
        CALLS.append("StubImage")
        return (Img({"BLACK": 0.0, "WHITE": 1.0, "NOISE": 0.37}[content], height, width),)


class StubConstantImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0}), "height": ("INT", {"default": 8}),
                             "width": ("INT", {"default": 8}), "batch_size": ("INT", {"default": 1})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "stub"

    def stub(self, value, height, width, batch_size):
        return (Img(value, height, width),)


class StubMask:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                             "height": ("INT", {"default": 8}), "width": ("INT", {"default": 8}), "batch_size": ("INT", {"default": 1})}}
    RETURN_TYPES = ("MASK",)
    FUNCTION = "stub"

    def stub(self, value, height, width, batch_size):
        CALLS.append("StubMask")
        return (value,)


class StubInt:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -(2**63), "max": 2**63 - 1})}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "stub"

    def stub(self, value):
        return (value,)


class StubFloat:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT", {"default": 0.0, "min": -1e9, "max": 1e9})}}
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "stub"

    def stub(self, value):
        return (value,)


class TestLazyMixImages:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image1": ("IMAGE", {"lazy": True}), "image2": ("IMAGE", {"lazy": True}), "mask": ("MASK",)}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "mix"

    def check_lazy_status(self, mask, image1, image2):
        needed = []
        if image1 is None and mask != 1.0:
            needed.append("image1")
        if image2 is None and mask != 0.0:
            needed.append("image2")
        return needed

    def mix(self, mask, image1, image2):
        CALLS.append("TestLazyMixImages")
        if mask == 0.0:
            return (image1,)
        if mask == 1.0:
            return (image2,)
        if (image1.height, image1.width) != (image2.height, image2.width):
            raise ValueError(f"image sizes differ: {image1} vs {image2}")
        return (Img(image1.value * (1 - mask) + image2.value * mask, image1.height, image1.width),)


class TestVariadicAverage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"input1": ("IMAGE",)}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "variadic_average"

    def variadic_average(self, input1, **kwargs):
        images = [input1, *kwargs.values()]
        return (Img(sum(i.value for i in images) / len(images), input1.height, input1.width),)


class TestCustomIsChanged:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}, "optional": {"should_change": ("BOOLEAN", {"default": False})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "custom_is_changed"

    def custom_is_changed(self, image, should_change=False):
        CALLS.append("TestCustomIsChanged")
        return (image,)

    @classmethod
    def IS_CHANGED(cls, should_change=False, *args, **kwargs):
        return float("NaN") if should_change else False


class TestIsChangedWithConstants:
    SEEN: ClassVar[list[Any]] = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "value": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "custom_is_changed"

    def custom_is_changed(self, image, value):
        CALLS.append("TestIsChangedWithConstants")
        return (Img(image.value * value, image.height, image.width),)

    @classmethod
    def IS_CHANGED(cls, image, value):
        cls.SEEN.append(image)
        return value if image is None else image.value * value


class TestCustomValidation1:  # literal coercion + union type "IMAGE,FLOAT"
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"input1": ("IMAGE,FLOAT",), "input2": ("IMAGE,FLOAT",)}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "custom_validation1"

    def custom_validation1(self, input1, input2):
        v1 = input1.value if isinstance(input1, Img) else input1
        v2 = input2.value if isinstance(input2, Img) else input2
        return (Img(v1 * v2),)

    @classmethod
    def VALIDATE_INPUTS(cls, input1=None, input2=None):
        if input1 is not None and not isinstance(input1, Img | float):
            return f"Invalid type of input1: {type(input1)}"
        if input2 is not None and not isinstance(input2, Img | float):
            return f"Invalid type of input2: {type(input2)}"
        return True


class TestCustomValidation2(TestCustomValidation1):  # same, no VALIDATE_INPUTS override of types
    pass


class TestCustomValidation3:  # type check skipped: VALIDATE_INPUTS takes input_types
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"input1": ("IMAGE,FLOAT",), "input2": ("IMAGE,FLOAT",)}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "custom_validation3"

    def custom_validation3(self, input1, input2):
        return (Img(0.5),)

    @classmethod
    def VALIDATE_INPUTS(cls, input_types, input1=None, input2=None):
        if "input1" in input_types and input_types["input1"] not in ("IMAGE", "FLOAT"):
            return f"Invalid type of input1: {input_types['input1']}"
        return True


class TestCustomValidation5:  # **kwargs validator rejects 7.0; min/max skipped for everything
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"input1": ("FLOAT", {"min": 0.0, "max": 1.0}), "input2": ("FLOAT", {"min": 0.0, "max": 1.0})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "custom_validation5"

    def custom_validation5(self, input1, input2):
        return (Img(input1 * input2),)

    @classmethod
    def VALIDATE_INPUTS(cls, **kwargs):
        if kwargs["input2"] == 7.0:
            return "7s are not allowed. I've never liked 7s."
        return True


class VariantSupport:  # smart type: accepts anything, checks with input_types
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (ANY,)}}
    RETURN_TYPES = (ANY,)
    FUNCTION = "passthrough"

    def passthrough(self, value):
        return (value,)


class TestDynamicDependencyCycle:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"input1": ("IMAGE",), "input2": ("IMAGE",)}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "dynamic_dependency_cycle"

    def dynamic_dependency_cycle(self, input1, input2):
        g = GraphBuilder()
        mask = g.node("StubMask", value=0.5, height=8, width=8, batch_size=1)
        mix1 = g.node("TestLazyMixImages", image1=input1, mask=mask.out(0))
        mix2 = g.node("TestLazyMixImages", image1=mix1.out(0), image2=input2, mask=mask.out(0))
        mix1.set_input("image2", mix2.out(0))  # the cycle
        return {"result": (mix2.out(0),), "expand": g.finalize()}


class ImageConst:  # holds an image given as a constant-like link target in expansions
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("FLOAT", {})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"

    def make(self, value):
        return (Img(value),)


class TestMakeListNode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value1": (ANY,)}, "optional": {"value2": (ANY,), "value3": (ANY,)}}
    RETURN_TYPES = (ANY,)
    FUNCTION = "make_list"
    OUTPUT_IS_LIST = (True,)

    def make_list(self, **kwargs):
        return ([kwargs[k] for k in sorted(kwargs)],)


class TestMixedExpansionReturns:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"input1": ("FLOAT",)}}
    RETURN_TYPES = ("IMAGE", "IMAGE")
    FUNCTION = "mixed_expansion_returns"

    def mixed_expansion_returns(self, input1):
        white = Img(1.0)
        if input1 <= 0.1:
            return (Img(0.1), white)
        if input1 <= 0.2:
            return {"result": (Img(0.2), white)}
        g = GraphBuilder()
        c = g.node("ImageConst", value=0.3)
        return {"result": (c.out(0), white), "expand": g.finalize()}


class TestSleep:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (ANY,), "seconds": ("FLOAT", {"default": 1.0, "min": 0.0})}}
    RETURN_TYPES = (ANY,)
    FUNCTION = "sleep"

    async def sleep(self, value, seconds):
        await asyncio.sleep(seconds)
        return (value,)


class TestParallelSleep:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",), "image3": ("IMAGE",),
                             "sleep1": ("FLOAT",), "sleep2": ("FLOAT",), "sleep3": ("FLOAT",)}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "parallel_sleep"

    def parallel_sleep(self, image1, image2, image3, sleep1, sleep2, sleep3):
        g = GraphBuilder()
        s1 = g.node("TestSleep", value=image1, seconds=sleep1)
        s2 = g.node("TestSleep", value=image2, seconds=sleep2)
        s3 = g.node("TestSleep", value=image3, seconds=sleep3)
        avg = g.node("TestVariadicAverage", input1=s1.out(0), input2=s2.out(0), input3=s3.out(0))
        return {"result": (avg.out(0),), "expand": g.finalize()}


class TestOutputNodeWithSocketOutput:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "value": ("FLOAT", {"default": 0.5})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "process"
    OUTPUT_NODE = True

    def process(self, image, value):
        out = Img(min(image.value * value, 1.0))
        return {"ui": {"value": [value]}, "result": (out,)}


class TestIntConditions:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT",), "b": ("INT",), "operation": (["==", "!=", "<", ">"],)}}
    RETURN_TYPES = ("BOOLEAN",)
    FUNCTION = "int_condition"

    def int_condition(self, a, b, operation):
        return ({"==": a == b, "!=": a != b, "<": a < b, ">": a > b}[operation],)


class TestExecutionBlocker:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"input": (ANY,), "block": ("BOOLEAN",), "verbose": ("BOOLEAN", {"default": False})}}
    RETURN_TYPES = (ANY,)
    FUNCTION = "execution_blocker"

    def execution_blocker(self, input, block, verbose):
        if block:
            return (ExecutionBlocker("Blocked Execution" if verbose else None),)
        return (input,)


class TestForLoopOpen:  # ComfyUI's for-loop: rawLink + expansion re-running the body
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"remaining": ("INT", {"default": 1, "min": 0})},
                "optional": {"initial_value1": (ANY,)}, "hidden": {"initial_value0": (ANY,)}}
    RETURN_TYPES = ("FLOW_CONTROL", "INT", ANY)
    FUNCTION = "for_loop_open"

    def for_loop_open(self, remaining, initial_value1=None, initial_value0=None):
        return ("stub", remaining, initial_value1)


class TestForLoopClose:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"flow_control": ("FLOW_CONTROL", {"rawLink": True})},
                "optional": {"initial_value1": (ANY, {"rawLink": True})},
                "hidden": {"dynprompt": "DYNPROMPT", "unique_id": "UNIQUE_ID"}}
    RETURN_TYPES = (ANY,)
    FUNCTION = "for_loop_close"

    def for_loop_close(self, flow_control, initial_value1=None, dynprompt=None, unique_id=None):
        # Unroll the body once per iteration: copy every node between open and close.
        open_id, _ = flow_control
        remaining = dynprompt.get_node(open_id)["inputs"]["remaining"]
        g = GraphBuilder()
        value = initial_value1
        if remaining <= 0:
            return {"result": (value,), "expand": g.finalize()} if isinstance(value, list) else (value,)
        body = [n for n in dynprompt.all_node_ids() if n not in (open_id, unique_id)
                and any(v == [open_id, 2] for v in dynprompt.get_node(n)["inputs"].values())]
        prev = [open_id, 2]
        start = dynprompt.get_node(open_id)["inputs"].get("initial_value1")
        for i in range(remaining):
            for n in body:
                data = dynprompt.get_node(n)
                inputs = {k: (prev if v == [open_id, 2] else v) for k, v in data["inputs"].items()}
                if i == 0:
                    inputs = {k: (start if v == [open_id, 2] else v) for k, v in data["inputs"].items()}
                node = g.node(data["class_type"], id=f"{n}_{i}", **inputs)
                prev = node.out(0)
        return {"result": (prev,), "expand": g.finalize()}


class SaveImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "optional": {"filename_prefix": ("STRING", {"default": "ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        CALLS.append("SaveImage")
        return {"ui": {"images": [images.value], "prompt": [prompt], "extra": [extra_pnginfo]}}


class PreviewImage(SaveImage):
    pass


class Failing:
    FAIL = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    def run(self, image):
        if Failing.FAIL:
            raise RuntimeError("boom")
        return (image,)


class AsyncFailing:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (ANY,)}}
    RETURN_TYPES = (ANY,)
    FUNCTION = "run"

    async def run(self, value):
        await asyncio.sleep(0.01)
        raise ValueError("async boom")


class AsyncValidate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    async def VALIDATE_INPUTS(cls, value):
        await asyncio.sleep(0)
        return True if value != 13 else "13 is unlucky"

    async def run(self, value):
        return (value,)


class AsyncLazy(TestLazyMixImages):
    async def check_lazy_status(self, mask, image1, image2):
        await asyncio.sleep(0)
        return super().check_lazy_status(mask, image1, image2)


NODES = {c.__name__: c for c in [
    StubImage, StubConstantImage, StubMask, StubInt, StubFloat, TestLazyMixImages, TestVariadicAverage,
    TestCustomIsChanged, TestIsChangedWithConstants, TestCustomValidation1, TestCustomValidation2,
    TestCustomValidation3, TestCustomValidation5, VariantSupport, TestDynamicDependencyCycle, ImageConst,
    TestMakeListNode, TestMixedExpansionReturns, TestSleep, TestParallelSleep, TestOutputNodeWithSocketOutput,
    TestIntConditions, TestExecutionBlocker, TestForLoopOpen, TestForLoopClose, SaveImage, PreviewImage,
    Failing, AsyncFailing, AsyncValidate, AsyncLazy,
]}


@pytest.fixture(params=["keep_all", "lru_100", "lru_0"])
def cache_mode(request: pytest.FixtureRequest) -> str:
    """ComfyUI runs its executor tests with classic, LRU 100 and no caching."""
    return str(request.param)


@pytest.fixture
def session(cache_mode: str, steps_node: type) -> Session:
    """A session with this pack plus ``ProgressNode`` (the engine pack's ``Steps`` node)."""
    from comfy_notebook.engine import LRU, Cache, KeepAll

    policy = {"keep_all": KeepAll(), "lru_100": LRU(100), "lru_0": LRU(0)}[cache_mode]
    s = Session(cache=Cache(policy), builtins=False)
    s.register({**NODES, "ProgressNode": steps_node})
    steps_node.HOOK = None
    CALLS.clear()
    TestIsChangedWithConstants.SEEN.clear()
    Failing.FAIL = True
    return s


@pytest.fixture
def caches(cache_mode: str) -> bool:
    return cache_mode != "lru_0"


@pytest.fixture
def builder(request: pytest.FixtureRequest) -> GraphBuilder:
    return GraphBuilder(prefix=request.node.name[:8] + "_")


@pytest.fixture
def pack() -> dict[str, type]:
    return NODES


@pytest.fixture
def img_type() -> type:
    return Img


@pytest.fixture
def calls() -> list[str]:
    return CALLS


@pytest.fixture
def clock() -> Any:
    return time.perf_counter
