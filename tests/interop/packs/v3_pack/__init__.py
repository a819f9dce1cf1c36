"""A V3 extension (comfy_api.latest): options, lazy, hidden, fingerprint, validate, lists, ui, expand."""

from comfy_api.latest import ComfyExtension, io, ui
from comfy_execution.graph_utils import GraphBuilder

CALLS = {"scale": 0, "expensive": 0}


class Scale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="V3Scale", display_name="Scale (V3)", category="test/v3",
            inputs=[io.Image.Input("image"),
                    io.Float.Input("factor", default=2.0, min=0.0, max=10.0, step=0.5),
                    io.Combo.Input("mode", options=["mul", "add"], default="mul")],
            outputs=[io.Image.Output(display_name="scaled")],
            hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, image, factor, mode):
        CALLS["scale"] += 1
        out = image * factor if mode == "mul" else image + factor
        return io.NodeOutput(out)

    @classmethod
    def validate_inputs(cls, factor):
        if factor == 7.0:
            return "factor 7 is not allowed"
        return True


class LazySwitch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="V3LazySwitch", category="test/v3",
            inputs=[io.Boolean.Input("use_a", default=True),
                    io.Image.Input("a", lazy=True), io.Image.Input("b", lazy=True)],
            outputs=[io.Image.Output()])

    @classmethod
    def check_lazy_status(cls, use_a, a=None, b=None):
        need = "a" if use_a else "b"
        return [need] if (a if use_a else b) is None else []

    @classmethod
    def execute(cls, use_a, a=None, b=None):
        return io.NodeOutput(a if use_a else b)


class Expensive(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Expensive", category="test/v3",
                         inputs=[io.Float.Input("value", default=1.0)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, value):
        import torch

        CALLS["expensive"] += 1
        return io.NodeOutput(torch.full((1, 4, 4, 3), value))


class Fingerprinted(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Fingerprinted", category="test/v3",
                         inputs=[io.String.Input("key", default="a")],
                         outputs=[io.Int.Output()])

    VERSION = {"value": 0}  # noqa: RUF012 - test state

    @classmethod
    def fingerprint_inputs(cls, key):
        return f"{key}:{cls.VERSION['value']}"

    @classmethod
    def execute(cls, key):
        return io.NodeOutput(cls.VERSION["value"])


class WhoAmI(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3WhoAmI", category="test/v3", is_output_node=True,
                         inputs=[io.String.Input("text", default="hi")],
                         outputs=[io.String.Output()],
                         hidden=[io.Hidden.unique_id, io.Hidden.prompt])

    @classmethod
    def execute(cls, text):
        label = f"{text} from {cls.hidden.unique_id} ({len(cls.hidden.prompt)} nodes)"
        return io.NodeOutput(label, ui=ui.PreviewText(label))


class Range(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Range", category="test/v3",
                         inputs=[io.Int.Input("n", default=3, min=1, max=10)],
                         outputs=[io.Int.Output(is_output_list=True)])

    @classmethod
    def execute(cls, n):
        return io.NodeOutput(list(range(n)))


class Sum(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Sum", category="test/v3", is_input_list=True,
                         inputs=[io.Int.Input("values", force_input=True)],
                         outputs=[io.Int.Output()])

    @classmethod
    def execute(cls, values):
        return io.NodeOutput(sum(values))


class DoubleViaExpand(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3DoubleViaExpand", category="test/v3", enable_expand=True,
                         inputs=[io.Image.Input("image")], outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image):
        g = GraphBuilder()
        node = g.node("V3Scale", image=image, factor=2.0, mode="mul")
        return io.NodeOutput(node.out(0), expand=g.finalize())


class Blocker(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Blocker", category="test/v3",
                         inputs=[io.Image.Input("image"), io.Boolean.Input("block", default=True)],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, image, block):
        if block:
            return io.NodeOutput(block_execution="blocked on purpose")
        return io.NodeOutput(image)


class AsyncAdd(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3AsyncAdd", category="test/v3",
                         inputs=[io.Int.Input("a", default=1), io.Int.Input("b", default=2)],
                         outputs=[io.Int.Output()])

    @classmethod
    async def execute(cls, a, b):
        import asyncio

        await asyncio.sleep(0)
        return io.NodeOutput(a + b)


class Extension(ComfyExtension):
    async def get_node_list(self):
        return [Scale, LazySwitch, Expensive, Fingerprinted, WhoAmI, Range, Sum, DoubleViaExpand,
                Blocker, AsyncAdd]


async def comfy_entrypoint():
    return Extension()
