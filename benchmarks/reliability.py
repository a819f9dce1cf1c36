"""Reliability figures (issue 19): faults injected at every point of the default prompt, fuzzed
inputs, and memory over a long session of reruns.  Writes ``benchmarks/results/reliability.txt``.

    PYTHONPATH=. python benchmarks/reliability.py [--reruns 1000] [--fuzz 10000] [--workflows 1000]

Injection points come from ``tests/reliability/harness.py`` (the executor's events, the model
manager's private methods, ``runtime._movement``'s movers); each point runs on a fresh session
with the fault, then the invariants are checked and the prompt rerun against a clean run's image.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import pathlib
import platform
import sys
import tempfile
import time
from collections import Counter
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "reliability"))

import torch  # noqa: E402
from harness import CKPT, clean_run, new_session, run_point, settle, tiny_prompt  # noqa: E402

SCENARIOS = {"roomy": None, "tight (8 MiB simulated device)": 8 << 20}
ALLOCATING = ("manager._adopt", "manager._ensure_built", "manager._load_full", "manager._load_partial",
              "manager._patch", "movement.flatten", "movement.place_full", "movement.place_partial",
              "movement.adopt_weights", "movement.patch_resident")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def faults(root: pathlib.Path) -> tuple[list[str], Counter[str]]:
    lines, totals = [], Counter()
    kinds = {
        "keyboard interrupt": (lambda p: KeyboardInterrupt(), {}, None, ("ExecutionInterrupted",)),
        "interrupt request": (None, {"flag": True}, None, ("ExecutionInterrupted", None)),
        "exception": (lambda p: RuntimeError(f"injected at {p}"), {}, None, ("NodeExecutionError",)),
        "out of memory (once)": (lambda p: torch.OutOfMemoryError("injected"), {}, ("placement", "step"), None),
        "out of memory (persistent)": (lambda p: torch.OutOfMemoryError("injected"), {"persistent": True},
                                       "alloc", None),
    }
    for scenario, cap in SCENARIOS.items():
        api = tiny_prompt()
        ref = clean_run(root, api, capacity=cap)
        sites = Counter(p.kind for p in ref.points)
        lines.append(f"scenario {scenario}: {len(ref.points)} injection points "
                     f"({sites['node']} node boundaries, {sites['step']} sampling steps, "
                     f"{sites['placement']} placement steps in {len({p.site for p in ref.points if p.kind == 'placement'})} sites)")
        for name, (fault, kw, only, accept) in kinds.items():
            if only == "alloc":
                points = [p for p in ref.points if p.kind == "step" or p.site in ALLOCATING]
            elif only:
                points = [p for p in ref.points if p.kind in only]
            else:
                points = ref.points
            t0 = time.perf_counter()
            c: Counter[str] = Counter()
            for p in points:
                o = run_point(root, api, ref, p, fault, capacity=cap, **kw)
                what = o.raised[0] if o.raised is not None else None
                if accept is None:
                    ok = o.raised is None or (what == "NodeExecutionError" and o.raised[1] == "ModelMemoryError")
                    c["recovered" if o.raised is None else "ModelMemoryError"] += 1
                else:
                    ok = what in accept
                c["points"] += 1
                c["survived"] += int(ok and not o.problems and not o.leaks and o.identical)
                c["leaks"] += len(o.leaks)
                c["problems"] += len(o.problems)
                c["identical"] += int(o.identical)
            totals.update(c)
            gc.unfreeze()  # anything frozen while still referenced is collected now
            settle()
            extra = f", recovered {c['recovered']}, ModelMemoryError {c['ModelMemoryError']}" if accept is None else ""
            lines.append(f"  {name:28s} points {c['points']:3d}  survived {c['survived']:3d}  leaks {c['leaks']}  "
                         f"invariant violations {c['problems']}  reruns identical {c['identical']}/{c['points']}"
                         f"{extra}  ({time.perf_counter() - t0:.1f} s)")
    lines.append(file_faults(root, totals))
    return lines, totals


def file_faults(root: pathlib.Path, totals: Counter[str]) -> str:
    """An OSError at every file read (EIO) and PNG write (ENOSPC) of an img2img prompt with a
    LoRA and an embedding."""
    from io_faults import FileInjector, fault_for
    from test_file_faults import file_prompt, make_file_root

    root = make_file_root(root / "file-faults")
    api = file_prompt()
    ref = clean_run(root, api, injector_type=FileInjector)
    points = [p for p in ref.points if p.kind == "file"]
    t0 = time.perf_counter()
    c: Counter[str] = Counter()
    for p in points:
        o = run_point(root, api, ref, p, fault_for, injector_type=FileInjector)
        clear = o.raised is None or (o.raised[0] in ("NodeExecutionError", "ValidationError")
                                     and o.raised[1] not in ("OSError", "FileNotFoundError"))
        c["points"] += 1
        c["survived"] += int(clear and not o.problems and not o.leaks and o.identical)
        c["leaks"] += len(o.leaks)
        c["problems"] += len(o.problems)
        c["identical"] += int(o.identical)
        c["recovered"] += int(o.raised is None)
    totals.update({k: v for k, v in c.items() if k != "recovered"})
    sites = sorted({p.site for p in points})
    return (f"scenario file faults (img2img + LoRA + embedding: LoadImage -> VAEEncode -> KSampler -> SaveImage): "
            f"{len(points)} file operations in {len(sites)} product functions ({', '.join(sites)})\n"
            f"  {'OSError (EIO read, ENOSPC write)':28s} points {c['points']:3d}  survived {c['survived']:3d}  "
            f"leaks {c['leaks']}  invariant violations {c['problems']}  reruns identical "
            f"{c['identical']}/{c['points']}, recovered {c['recovered']}  ({time.perf_counter() - t0:.1f} s)")


def fuzz(root: pathlib.Path, n_api: int, n_workflows: int) -> list[str]:
    from hypothesis import HealthCheck, given, settings
    from test_untrusted_inputs import ACCEPTED, _apply, _mutations, api_prompts

    from comfy_notebook.pnginfo import api_to_workflow, workflow_to_api

    s = new_session(root)
    s.executor.execute = lambda validated, **kw: validated  # type: ignore[method-assign]
    names = sorted(s.registry.names())
    specs = {n: s.registry.get(n) for n in names}
    outcomes: dict[str, Counter[str]] = {"api": Counter(), "workflow": Counter()}

    def classify(kind: str, fn: Any) -> None:
        try:
            fn()
            outcomes[kind]["accepted (validated)"] += 1
        except ACCEPTED as exc:
            outcomes[kind][type(exc).__name__] += 1
        except Exception as exc:  # would be a bug: reported, counted
            outcomes[kind][f"UNEXPECTED {type(exc).__name__}"] += 1

    common = {"deadline": None, "derandomize": True, "database": None, "suppress_health_check": list(HealthCheck)}

    @settings(max_examples=n_api, **common)
    @given(api_prompts(names, specs))
    def api_case(api: Any) -> None:
        classify("api", lambda: s.run_prompt(api))

    workflow = api_to_workflow(tiny_prompt(), s.registry)

    @settings(max_examples=n_workflows, **common)
    @given(_mutations(workflow))
    def workflow_case(edits: Any) -> None:
        classify("workflow", lambda: s.run_prompt(workflow_to_api(_apply(workflow, edits), s.registry)))

    t0 = time.perf_counter()
    api_case()
    workflow_case()
    out = []
    for kind, c in outcomes.items():
        out.append(f"  {kind:8s} cases {sum(c.values()):5d}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    out.append(f"  ({time.perf_counter() - t0:.1f} s)")
    return out


def long_session(root: pathlib.Path, reruns: int) -> list[str]:
    s = new_session(root)
    manager = s.models
    subs0 = (len(s._subscribers), len(manager._subscribers))
    samples = []
    peak = 0
    t0 = time.perf_counter()
    for i in range(reruns):
        api = tiny_prompt(seed=1000 + i)
        api["6"]["inputs"]["text"] = f"a photo, variation {i % 7}"
        s.run_prompt(api)
        peak = max(peak, s.cache.stats().bytes)
        if i % 10 == 9:
            gc.collect()
            samples.append((i + 1, rss_bytes(), len(s.cache), s.cache.stats().bytes))
    seconds = time.perf_counter() - t0
    warm = samples[min(1, len(samples) - 1)]
    last = samples[-1]
    drift = last[1] - warm[1]
    per100 = drift / max(1, last[0] - warm[0]) * 100
    subs = (len(s._subscribers), len(manager._subscribers))
    in_use = sum(m.in_use for m in manager._models.values())
    return [
        f"  {reruns} reruns of the default prompt (new seed each, 7 prompt texts), {seconds:.1f} s",
        f"  RSS after {warm[0]} reruns {warm[1] / 2**20:.1f} MiB, after {last[0]} {last[1] / 2**20:.1f} MiB: "
        f"drift {drift / 2**20:+.1f} MiB ({per100 / 2**20:+.2f} MiB per 100 reruns)",
        f"  cache (default policy {s.cache.policy!r}): {last[2]} entries, {last[3] / 2**20:.1f} MiB of "
        f"outputs held, peak {peak / 2**20:.1f} MiB, {s.cache.stats().evictions} evictions (within budget: "
        f"{peak <= (s.cache.policy.ram_bytes or 0)})",
        f"  subscribers session/manager before {subs0}, after {subs}; models in use after: {in_use}; "
        f"reserved inference bytes: {manager._reserved}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reruns", type=int, default=1000)
    ap.add_argument("--fuzz", type=int, default=10_000)
    ap.add_argument("--workflows", type=int, default=1000)
    ap.add_argument("--out", default=str(HERE / "results" / "reliability.txt"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from comfy_notebook.testing import make_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        make_checkpoint(root / "models" / "checkpoints" / CKPT, preset="sd1-tiny", seed=0)
        (root / "input").mkdir()
        gc.collect()
        gc.freeze()
        t0 = time.perf_counter()
        lines = [
            "# benchmarks/reliability.py: faults injected everywhere, fuzzed inputs, a long session",
            f"# command: PYTHONPATH=. python benchmarks/reliability.py --reruns {args.reruns} "
            f"--fuzz {args.fuzz} --workflows {args.workflows}",
            f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}, 1 thread, CPU (simulated device for the tight scenario)",
            "",
            "## Fault injection (default prompt, tiny SD1 checkpoint, 64 px, 3 steps; fresh session per point)",
        ]
        fault_lines, totals = faults(root)
        lines += fault_lines
        lines.append(f"  TOTAL injection runs {totals['points']}, faults survived {totals['survived']}, "
                     f"leaks found {totals['leaks']}, invariant violations {totals['problems']}, "
                     f"reruns identical {totals['identical']}/{totals['points']}")
        settle()
        lines += ["", "## Fuzzing (validated, not executed)", *fuzz(root, args.fuzz, args.workflows)]
        gc.unfreeze()
        settle()
        lines += ["", "## Long session", *long_session(root, args.reruns)]
        lines.append(f"\n# total {time.perf_counter() - t0:.0f} s")
    text = "\n".join(lines) + "\n"
    print(text)
    with contextlib.suppress(FileNotFoundError):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
