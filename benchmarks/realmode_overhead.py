"""Real-mode overhead: a 7-node text-to-image-shaped cell, fully cached rerun and cold run.

Stand-in nodes with the SD nodes' names, inputs and output types do trivial work, so what is
measured is real mode + executor + cache, not torch.  Prints and writes
``benchmarks/results/realmode_overhead.txt``.

    python benchmarks/realmode_overhead.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

IN_NODE = [0.0]  # seconds spent inside node functions


def _timed(fn: Any) -> Any:
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        finally:
            IN_NODE[0] += time.perf_counter() - t0

    return wrapper


def _node(name: str, inputs: dict[str, Any], outputs: tuple[str, ...], fn: Any, output_node: bool = False) -> type:
    return type(name, (), {
        "INPUT_TYPES": classmethod(lambda cls: {"required": inputs}),
        "RETURN_TYPES": outputs, "FUNCTION": "run", "OUTPUT_NODE": output_node, "CATEGORY": "bench",
        "run": _timed(fn),
    })


PACK = {
    "CheckpointLoaderSimple": _node("CheckpointLoaderSimple", {"ckpt_name": (["sd15.safetensors"],)},
                                    ("MODEL", "CLIP", "VAE"), lambda self, ckpt_name: ("m", "c", "v")),
    "CLIPTextEncode": _node("CLIPTextEncode", {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)},
                            ("CONDITIONING",), lambda self, text, clip: ([[text, {}]],)),
    "EmptyLatentImage": _node("EmptyLatentImage", {"width": ("INT", {"default": 512}), "height": ("INT", {"default": 512}),
                                                   "batch_size": ("INT", {"default": 1})},
                              ("LATENT",), lambda self, width, height, batch_size: ({"samples": (width, height)},)),
    "KSampler": _node("KSampler", {"model": ("MODEL",), "seed": ("INT", {"default": 0}), "steps": ("INT", {"default": 20}),
                                   "cfg": ("FLOAT", {"default": 8.0}), "sampler_name": (["euler", "heun"],),
                                   "scheduler": (["normal", "karras"],), "positive": ("CONDITIONING",),
                                   "negative": ("CONDITIONING",), "latent_image": ("LATENT",),
                                   "denoise": ("FLOAT", {"default": 1.0})},
                      ("LATENT",), lambda self, **kw: ({"samples": kw["seed"]},)),
    "VAEDecode": _node("VAEDecode", {"samples": ("LATENT",), "vae": ("VAE",)}, ("IMAGE",),
                       lambda self, samples, vae: ([samples["samples"]],)),
    "SaveImage": _node("SaveImage", {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "x"})}, (),
                       lambda self, images, filename_prefix: {"ui": {"images": [filename_prefix]}}, True),
}


def cell(n: dict[str, Any], seed: int = 42) -> Any:
    """The quickstart cell: 7 node calls."""
    model, clip, vae = n["CheckpointLoaderSimple"]("sd15.safetensors")
    pos = n["CLIPTextEncode"]("a glass bottle with a purple galaxy inside", clip)
    neg = n["CLIPTextEncode"]("text, watermark", clip)
    latent = n["KSampler"](model, seed, 20, 8.0, "euler", "normal", pos, neg, n["EmptyLatentImage"](512, 512, 1))
    image = n["VAEDecode"](latent, vae)
    n["SaveImage"](image, "bottle")
    return image


def _fresh() -> tuple[Any, dict[str, Any]]:
    from comfy_notebook._session import Session, use_session
    from comfy_notebook.realmode import node_function

    s = Session()
    s.options = {"progress": False}
    s.register(PACK)
    use_session(s)
    return s, {name: node_function(name) for name in PACK}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()

    cold, cold_overhead = [], []
    for _ in range(max(args.repeat // 10, 5)):
        _, n = _fresh()
        IN_NODE[0] = 0.0
        t0 = time.perf_counter()
        cell(n)
        total = time.perf_counter() - t0
        cold.append(total)
        cold_overhead.append(total - IN_NODE[0])

    session, n = _fresh()
    cell(n)
    warm = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        cell(n)
        warm.append(time.perf_counter() - t0)
    assert session.cache.stats().entries == 7

    seed_change = []
    for i in range(max(args.repeat // 10, 5)):
        t0 = time.perf_counter()
        cell(n, seed=1000 + i)
        seed_change.append(time.perf_counter() - t0)

    def ms(xs: list[float]) -> str:
        return f"median {statistics.median(xs) * 1e3:.3f} ms, min {min(xs) * 1e3:.3f} ms"

    lines = [
        f"realmode_overhead ({platform.python_version()}, {platform.machine()}, {platform.processor() or 'cpu'})",
        f"fully cached rerun of the 7-node cell: {ms(warm)} (goal < 5 ms); "
        f"per call {statistics.median(warm) / 7 * 1e6:.0f} us",
        f"cold run, total: {ms(cold)}",
        f"cold run, overhead outside node functions: {ms(cold_overhead)} "
        f"(per node {statistics.median(cold_overhead) / 7 * 1e6:.0f} us)",
        f"seed change (3 nodes rerun, 4 hits): {ms(seed_change)}",
        f"command: python benchmarks/realmode_overhead.py --repeat {args.repeat}",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "realmode_overhead.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
