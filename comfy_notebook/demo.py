"""The main job: ComfyUI's default text-to-image prompt, run in this process, three times.

``python -m comfy_notebook.demo`` runs the prompt ComfyUI's web UI starts with (checkpoint
loader -> two text encoders -> empty latent -> KSampler -> VAE decode -> save) through
``Session.run_prompt``: once cold, once fully cached, and once with a new seed (only the sampler,
the decoder and the save rerun).  With no ``--models-dir`` it uses a tiny random-weight SD1
checkpoint that it writes itself (deterministic, a few MB, no download): the pipeline is real but
random weights draw noise.  Point ``--models-dir`` at a ComfyUI ``models`` folder and pass
``--ckpt v1-5-pruned-emaonly.safetensors`` for a real image.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

DEMO_CKPT = "comfy-notebook-tiny-sd1.safetensors"


def default_prompt() -> dict[str, Any]:
    """ComfyUI's default text-to-image prompt in API format."""
    text = resources.files("comfy_notebook.data").joinpath("default_txt2img_api.json").read_text()
    return json.loads(text)


def _demo_models_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "comfy_notebook" / "demo"
    ckpt = root / "models" / "checkpoints" / DEMO_CKPT
    if not ckpt.exists():
        from comfy_notebook.testing import make_checkpoint

        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        make_checkpoint(tmp, preset="sd1-tiny", seed=0)
        tmp.replace(ckpt)
    return root / "models"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfy_notebook.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", help="a ComfyUI models folder (default: a tiny generated checkpoint)")
    parser.add_argument("--ckpt", default=None, help="checkpoint file name under models/checkpoints")
    parser.add_argument("--output-dir", default="output", help="where PNGs go (default: ./output)")
    parser.add_argument("--size", type=int, default=None,
                        help="width and height in pixels (default: the prompt's 512; 128 on the tiny checkpoint)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None, help="default: the fixture's seed")
    args = parser.parse_args(argv)

    from comfy_notebook._session import Session

    models_dir = Path(args.models_dir) if args.models_dir else _demo_models_dir()
    ckpt = args.ckpt or (DEMO_CKPT if not args.models_dir else None)
    session = Session(models_dir=models_dir, output_dir=args.output_dir)  # with the built-in nodes
    if ckpt is None:
        names = session.registry.current("CheckpointLoaderSimple").inputs["ckpt_name"].type
        if not names:
            parser.error(f"no checkpoints under {models_dir / 'checkpoints'}; pass --ckpt")
        ckpt = names[0]

    prompt = default_prompt()
    prompt["4"]["inputs"]["ckpt_name"] = ckpt
    size = args.size or (512 if args.models_dir else 128)
    prompt["5"]["inputs"].update(width=size, height=size)
    prompt["3"]["inputs"]["steps"] = args.steps
    if args.seed is not None:
        prompt["3"]["inputs"]["seed"] = args.seed

    print(f"comfy_notebook demo: ComfyUI's default prompt, checkpoint {ckpt} ({models_dir})")
    if not args.models_dir:
        print("  (a tiny random-weight checkpoint: the image is noise; see --help for real models)")

    def run(label: str, api: dict[str, Any]) -> Any:
        t0 = time.perf_counter()
        result = session.run_prompt(api)
        ms = (time.perf_counter() - t0) * 1000
        ran = ", ".join(f"{n} {api[n]['class_type']}" for n in sorted(result.executed, key=int)) or "nothing"
        print(f"{label:<18} {ms:9.1f} ms   ran: {ran}")
        return result

    first = run("cold run", prompt)
    run("same prompt again", prompt)
    reseeded = copy.deepcopy(prompt)
    reseeded["3"]["inputs"]["seed"] = prompt["3"]["inputs"]["seed"] + 1
    last = run("new seed", reseeded)

    for result in (first, last):
        for image in result.ui.get("9", {}).get("images", []):
            print("saved", Path(args.output_dir) / image["subfolder"] / image["filename"])
    print(session.models)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
