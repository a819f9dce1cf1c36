"""Cells of notebooks/05_sweeps_and_backends.ipynb (built by make_notebooks.py)."""

from __future__ import annotations

from collections.abc import Callable

from nbformat.v4 import new_code_cell, new_markdown_cell


def cells(preamble: Callable[[str, str], list], ran: str) -> list:
    return [
        *preamble("Sweeps and backends", """\
Workflows at scale: an API-format prompt as a Jinja2 *template*, `num_samples` images in
batches with a documented seed rule, an async API that works in this notebook's running event
loop, a parameter *sweep* into a tidy table that `plot.xy_grid` draws, and the same sweep on
two Ray workers (a local Ray on this machine). A ComfyUI server is a backend too:
`Session(backend=ComfyUIServer("http://host:8188"))` runs all of this there."""),
        new_code_cell(ran),
        new_markdown_cell("""\
## A workflow template
Any value of an API prompt may be a Jinja2 expression; undefined variables are errors, and
`seed`, `batch_size` and `input_images_dir` are reserved (the batcher and sweeps set them)."""),
        new_code_cell("""\
import json

from comfy_notebook.backends import WorkflowTemplate
from comfy_notebook.demo import default_prompt
from comfy_notebook.errors import TemplateError

prompt = default_prompt()
prompt["4"]["inputs"]["ckpt_name"] = CKPT
prompt["5"]["inputs"].update(width=SIZE, height=SIZE, batch_size="@batch_size@")
prompt["3"]["inputs"].update(steps=STEPS, seed="@seed@", cfg="@cfg@")
prompt["6"]["inputs"]["text"] = "@text@"
text = json.dumps(prompt, indent=1)
for name, expr in [("batch_size", "{{ batch_size|int }}"), ("seed", "{{ seed }}"),
                   ("cfg", "{{ cfg|float }}"), ("text", "{{ text|tojson }}")]:
    text = text.replace(f'"@{name}@"', expr)
Path("txt2img.json.jinja").write_text("{# ComfyUI's default prompt, templated #}\\n" + text)

template = WorkflowTemplate.from_file("txt2img.json.jinja")
print("variables:", sorted(template.variables))
try:
    template.render(seed=1, batch_size=1, text="a cat")
except TemplateError as error:
    print("error:", str(error).splitlines()[0])"""),
        new_markdown_cell("""\
## Batches
`num_samples=5, batch_size=2, seed=100` runs batches of 2, 2 and 1 with seeds 100, 102 and
104: sample *i* has the seed 100 + *i*. Images stream as each batch finishes; the checkpoint
loader and the text encoders run once."""),
        new_code_cell("""\
from comfy_notebook.backends import sample_seeds

ran.clear()
variables = {"cfg": 7.0, "text": "a glass bottle with a purple galaxy inside"}
for image in session.batches(template, num_samples=5, batch_size=2, seed=100, variables=variables):
    print(f"seed {image.seed}: image {image.batch_index} of batch seed {image.batch_seed} -> {image.filename}")
print("seeds its PNG records:", sample_seeds(image.data))
show_ran()"""),
        new_markdown_cell("""\
## The async API
`await session.run_prompt_async(prompt, priority=...)` queues a prompt and waits without
blocking the notebook's event loop (prompts run one at a time on a worker thread). Higher
priorities run first."""),
        new_code_cell("""\
import asyncio

done = []


async def run(seed, priority):
    await session.run_prompt_async(template.render(seed=seed, batch_size=1, **variables), priority=priority)
    done.append(priority)


with session.queue.paused():  # queue all four, then let them go
    tasks = [asyncio.ensure_future(run(200 + i, p)) for i, p in enumerate([0, 5, 1, 3])]
    await asyncio.sleep(0.1)
await asyncio.gather(*tasks)
print("completed by priority:", done)"""),
        new_markdown_cell("""\
## A sweep
`session.sweep(template, grid=...)` runs every combination, ordered so the cache is reused (the
cheapest parameter varies innermost: here the text is encoded once per text, not once per
run), and returns one row per image."""),
        new_code_cell("""\
from comfy_notebook.backends import sweep_order

grid = {"cfg": [4.0, 8.0], "seed": [1, 2, 3]}
print("loop order (outermost first):", sweep_order(template, {**grid, "text": ["a", "b"]}))
ran.clear()
table = session.sweep(template, grid=grid, fixed={"text": "a red apple", "batch_size": 1})
rows = table.to_dict("records") if hasattr(table, "to_dict") else table
print(len(rows), "rows; columns:", list(rows[0])[:8], "...")
show_ran()"""),
        new_markdown_cell("""\
## The same sweep on two Ray workers
`RayBackend()` starts (or joins) Ray; each worker holds a session whose models stay loaded.
Prompts are grouped by checkpoint, images come back through Ray's object store, and the table
says which worker ran what. Set `COMFY_NOTEBOOK_RAY=0` to skip this part."""),
        new_code_cell("""\
import importlib.util

import numpy as np

RAY = os.environ.get("COMFY_NOTEBOOK_RAY", "1") == "1" and importlib.util.find_spec("ray") is not None
if RAY:
    import ray

    from comfy_notebook.backends import RayBackend

    local_ray = {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}  # this machine
    ray_session = comfy_notebook.Session(models_dir=MODELS_DIR, output_dir="output_ray",
                                         backend=RayBackend(num_workers=2, init_kwargs=local_ray))
    ray_table = ray_session.sweep(template, grid=grid, fixed={"text": "a red apple", "batch_size": 1})
    ray_rows = ray_table.to_dict("records") if hasattr(ray_table, "to_dict") else ray_table
    print("workers:", sorted({r["worker"] for r in ray_rows}))
    print("checkpoint loads per worker:",
          {w: sum(s["loads"].values()) for w, s in ray_session.backend.stats().items()})
    same = all(np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
               for a, b in zip(rows, ray_rows, strict=True))
    print("same images as in-process:", same)
    ray_session.queue.close()
    ray_session.backend.close()
    ray.shutdown()"""),
        new_markdown_cell("## The grid\n`plot.xy_grid` takes the sweep's table as it is."),
        new_code_cell("""\
from comfy_notebook.plot import xy_grid

xy_grid(table, x="cfg", y="seed")"""),
    ]
