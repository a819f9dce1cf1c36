#!/usr/bin/env bash
# The one command for a lent GPU machine, from the repository root:   bash scripts/gpu_run.sh
#
# 1. installs the wheels carried in .whl/ (e.g. diffusers, torchsde, trampoline) into /tmp/site
#    without touching the machine's packages;
# 2. runs benchmarks/gpu_suite.py (every GPU figure, < 4 min, its own per-part budgets);
# 3. runs every gpu-marked test, then the two e2e tests whose CUDA variants were failing.
# Everything printed goes to $OUT/gpu_log.txt; the suite's results file is copied to $OUT.
# Budget: ~3.8 + 2 + 1.5 min at most (each step under its own timeout).
# A CPU rehearsal: GPU_SUITE_ARGS=--dry-run OUT=/tmp/out bash scripts/gpu_run.sh
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"

main() {
export PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1 COMFY_NOTEBOOK_PROGRESS=0

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 - <<'PY'
import importlib, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
for name in ("diffusers", "transformers", "safetensors", "torchsde", "tqdm", "PIL", "numpy",
             "hypothesis", "IPython", "anywidget"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name} {getattr(mod, '__version__', '?')}")
    except Exception as exc:  # noqa: BLE001 - a report, not a check
        print(f"  {name} MISSING ({type(exc).__name__})")
PY

echo "== gpu_suite"
timeout -k 10 235 python3 benchmarks/gpu_suite.py --budget 205 ${GPU_SUITE_ARGS:-}
echo "gpu_suite exit $?"
cp benchmarks/results/gpu_suite_*.txt "$OUT"/ 2>/dev/null || true

echo "== gpu-marked tests"
mapfile -t GPU_FILES < <(grep -rl "mark.gpu" tests --include='*.py' | sort)
timeout -k 10 130 python3 -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors \
  -o addopts="--strict-markers --import-mode=importlib -ra" "${GPU_FILES[@]}"
echo "gpu tests exit $?"

echo "== the two e2e tests that failed on CUDA (their cuda variants, verbose)"
timeout -k 10 90 python3 -m pytest -v -p no:cacheprovider \
  -o addopts="--strict-markers --import-mode=importlib -ra" \
  "tests/e2e/test_lora_embeddings.py::test_unpatched_model_after_a_lora_clone_in_accounting_mode[cuda]" \
  "tests/e2e/test_sd_pipeline.py::test_tight_cpu_budget_partial_loading_gives_the_same_image[cuda]"
echo "e2e tests exit $?"
}

main 2>&1 | tee -a "$OUT/gpu_log.txt"
