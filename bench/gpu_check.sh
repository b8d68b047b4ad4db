#!/usr/bin/env bash
# The one prepared GPU check (issue 26). Three ways to run it, from the repository root:
#
#   bash bench/gpu_check.sh --prepare   on the CPU machine, before the GPU run: fills .gpu_carry/ (ignored by
#                                       git through .git/info/exclude) with what the GPU machine lacks and cannot
#                                       fetch (it has no internet): wheels of transformers, timm, datasets, evaluate
#                                       and their missing needs, at this venv's versions; the shared MobileNetV2 and
#                                       EfficientNet-Lite0 checkpoints; hotdog; the CIFAR-10 split (200 + 50 a class).
#   bash bench/gpu_check.sh             on the GPU machine (device tool: carry [".gpu_carry"]): installs those
#                                       wheels into /tmp (nothing from the internet), then runs, in under 8 minutes
#                                       on one H200 (budget per part below):
#       setup      ~30 s  wheels, the imports, a bf16 8192^3 matrix product (the measured peak beside the data
#                         sheet's)
#       breakdown  170 s  bench/step_breakdown.py --configs gpu, all in one process: loader alone, ceiling,
#                         loader-fed step without a Trainer, trainer.train(); MobileNetV2 at batch 32 and 256,
#                         ViT-B/16 and ConvNeXt-T (random weights) at 128, EfficientNet-Lite0 at 256; bf16 as
#                         the defaults choose on a GPU; images/s, ratio to the ceiling, GFLOP/image, MFU
#       main       260 s  bench/throughput.py --parts gpu: per model and size one fresh process running the
#                         transformers-example baseline, hf-finetune train (defaults) and the ceiling, on the
#                         CIFAR-10 split (and hotdog for MobileNetV2 / Lite0): images/s, ratios, accuracy, MFU
#     It writes ONE JSON of all figures, bench/results/gpu_check.json (row by row, so a part cut short by its
#     budget keeps the rows it finished), prints the tables, and copies the JSON and the logs to $OUT when set.
#   bash bench/gpu_check.sh --smoke     on any CPU: every part with tiny random models of the same families on
#                                       tiny generated images (a wiring check; figures mean nothing); its JSON
#                                       goes to $WORK/gpu_check_smoke.json.
#
# STEPS (main, default 20) and BREAKDOWN_STEPS (default 20, after 5 warm-up) size it; PARTS (default
# "breakdown main") picks what runs; "recipe" (the hotdog recipe under accelerate, ~40 s), "loader"
# (bench/loader_cost.py) and "ablations" (bench/throughput.py's GPU ablations, minutes) are extra parts.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CARRY=$ROOT/.gpu_carry
PY=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}  # python3 on the GPU image
MODE=gpu
case "${1:-}" in
  --prepare) MODE=prepare ;;
  --smoke) MODE=smoke ;;
  "") ;;
  *) echo "gpu_check: unknown argument ${1} (expected --prepare, --smoke or nothing)"; exit 2 ;;
esac

if [ "$MODE" = prepare ]; then  # on the CPU machine, with ../shared and a package index
  SHARED=${HF_FINETUNE_SHARED:-$ROOT/../shared}
  set -e
  rm -rf "$CARRY"
  mkdir -p "$CARRY/wheels" "$CARRY/shared/models" "$CARRY/shared/data" "$CARRY/work"
  EXCLUDE=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$EXCLUDE")"
  grep -qx '/.gpu_carry/' "$EXCLUDE" 2>/dev/null || echo '/.gpu_carry/' >> "$EXCLUDE"
  # What the GPU image lacks (datasets, evaluate, dill, multiprocess) or has at other versions than this venv
  # (transformers, timm, and the pins datasets/transformers check: fsspec, regex). Python 3.12 there.
  for name in transformers timm datasets evaluate dill multiprocess fsspec regex; do
    version=$($PY -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$CARRY/wheels" "$name==$version"
  done
  cp -r "$SHARED/models/hf-mobilenet_v2_1.0_224" "$SHARED/models/timm-tf_efficientnet_lite0" "$CARRY/shared/models/"
  cp -r "$SHARED/data/hotdog" "$CARRY/shared/data/"
  LINKS=$(mktemp -d)  # bench/throughput.py's CIFAR-10 split (symlinks), copied as files
  HF_FINETUNE_SHARED=$SHARED $PY -c "import sys; from pathlib import Path; sys.path.insert(0, 'bench'); \
import throughput; throughput.prepare_data('cifar10', Path(sys.argv[1]))" "$LINKS"
  cp -rL "$LINKS"/cifar10-* "$CARRY/work/"
  rm -rf "$LINKS"
  chmod -R u+w "$CARRY"
  ls "$CARRY/wheels"
  carried=$(tar cf - -C "$ROOT" .gpu_carry | wc -c)
  tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | tar cf - --null -T - 2>/dev/null | wc -c)
  echo "gpu_check: .gpu_carry ready: $((carried / 1048576)) MiB, with the working tree $(((carried + tree) / 1048576)) MiB (the device tool carries 64 MiB at most)"
  exit 0
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -d "$CARRY/wheels" ] && [ "$MODE" = gpu ]; then
  SITE=/tmp/gpu_check_site
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$CARRY"/wheels/*.whl || { echo "gpu_check: installing the carried wheels failed"; exit 2; }
  export PYTHONPATH=$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d "$CARRY/shared" ] && export HF_FINETUNE_SHARED=$CARRY/shared
if [ "$MODE" = smoke ]; then
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1
  WORK=${WORK:-$(mktemp -d)}
  RESULTS=${RESULTS:-$WORK/gpu_check_smoke.json}
  SMOKE=(--smoke)
  BUDGET_BREAKDOWN=600 BUDGET_MAIN=600 STEPS=${STEPS:-4} BREAKDOWN_STEPS=${BREAKDOWN_STEPS:-1} WARMUP=1
  MAIN_FLAGS=(--in-process)
else
  WORK=${WORK:-$([ -d "$CARRY/work" ] && echo "$CARRY/work" || mktemp -d)}  # holds the CIFAR-10 split
  RESULTS=${RESULTS:-$ROOT/bench/results/gpu_check.json}
  SMOKE=()
  BUDGET_BREAKDOWN=170 BUDGET_MAIN=260 STEPS=${STEPS:-20} BREAKDOWN_STEPS=${BREAKDOWN_STEPS:-20} WARMUP=5
  MAIN_FLAGS=()
fi
LOGS=${OUT:-$WORK/logs}
mkdir -p "$LOGS" "$(dirname "$RESULTS")"
rm -f "$RESULTS"
exec > >(tee -a "$LOGS/gpu_check.log") 2>&1
echo "gpu_check ($MODE): results $RESULTS, logs $LOGS, work $WORK"

$PY - "$MODE" <<'PY' || { echo "gpu_check: the stack does not import (above); nothing measured; \
on the GPU machine: 'bash bench/gpu_check.sh --prepare' on the CPU machine first, then carry .gpu_carry"; exit 2; }
import importlib.metadata as m, sys
import torch, torchvision, transformers, timm, datasets, evaluate, accelerate, hf_finetune  # noqa: F401
names = ("torch", "torchvision", "transformers", "timm", "datasets", "evaluate", "accelerate", "huggingface_hub",
         "tokenizers", "pyarrow", "fsspec")
print(" | ".join(f"{n} {m.version(n)}" for n in names))
if sys.argv[1] == "gpu":
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no GPU visible (torch.cuda.is_available() is false); --smoke runs on a CPU")
    print("gpu:", torch.cuda.get_device_name(0), "| CPUs:", len(__import__("os").sched_getaffinity(0)))
PY

PARTS=${PARTS:-breakdown main}
wants() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
part() {  # name, budget (s), command...: the part's stdout here, its stderr in LOGS/<name>.log
  local name=$1 budget=$2; shift 2
  local start=$SECONDS
  echo; echo "== $name (budget $budget s)"
  timeout --kill-after=10 "$budget" "$@" 2> "$LOGS/$name.log"
  local rc=$?
  [ $rc -eq 0 ] || echo "gpu_check: $name stopped with exit $rc after $((SECONDS - start)) s (rows it finished are in $RESULTS); see $LOGS/$name.log"
  echo "== $name took $((SECONDS - start)) s"
}

if wants breakdown; then
  part breakdown "$BUDGET_BREAKDOWN" $PY bench/step_breakdown.py --configs gpu --data cifar10 \
    --steps "$BREAKDOWN_STEPS" --warmup "$WARMUP" --repeats 1 --workdir "$WORK" --json "$RESULTS" "${SMOKE[@]}"
fi
if wants main; then
  part main "$BUDGET_MAIN" $PY bench/throughput.py --parts gpu --steps "$STEPS" --budget $((BUDGET_MAIN - 15)) \
    --workdir "$WORK" --json "$RESULTS" "${SMOKE[@]}" "${MAIN_FLAGS[@]}"
fi

# Extra parts (not in the 8 minutes): the hotdog recipe in bf16 under accelerate (single_gpu.yaml; multi_gpu.yaml
# too when there are several GPUs), bench/loader_cost.py, and bench/throughput.py's GPU ablations.
RECIPE=recipes/mobilenet_v2/hotdog/config_full.yaml
run() {  # name, accelerate config, extra flags
  local name=$1 config=$2; shift 2
  $PY -m accelerate.commands.launch --config_file "recipes/accelerate_configs/$config.yaml" \
    ${NPROC:+--num_processes "$NPROC"} -m hf_finetune train "$RECIPE" \
    --output_dir "$WORK/$name" --overwrite_output_dir true --bf16 true --report_to none \
    --disable_tqdm true "$@" > "$LOGS/$name.log" 2>&1 || { echo "$name failed: see $LOGS/$name.log"; return; }
  $PY - "$WORK/$name" "$name" <<'PY'
import json, sys
from pathlib import Path
out, name = Path(sys.argv[1]), sys.argv[2]
train = json.loads((out / "train_results.json").read_text())
evals = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "eval_accuracy" in e]
print(f"| {name} | {evals[0]['eval_accuracy']:.2f} | {max(e['eval_accuracy'] for e in evals):.2f} | "
      f"{train['train_samples_per_second']:.1f} | {train['train_runtime']:.1f} |")
PY
}
if wants recipe; then
  NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
  echo; echo "| run | accuracy epoch 0 | best accuracy | train images/s | train s |"; echo "|---|---|---|---|---|"
  run single_gpu_bf16 single_gpu
  if [ "$NGPU" -gt 1 ]; then NPROC=$NGPU run multi_gpu_bf16 multi_gpu; fi
fi
if wants loader; then
  part loader_cost 120 $PY bench/loader_cost.py
fi
if wants ablations; then
  part ablations 600 $PY bench/throughput.py --parts ablations --steps "$STEPS" --datasets hotdog \
    --workdir "$WORK" --json "$WORK/throughput_ablations.json"
fi

echo
if [ -f "$RESULTS" ]; then
  $PY - "$RESULTS" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
rows = {part: len(results.get(part, [])) for part in ("breakdown", "main")}
failed = [f"{r['model']} {r['batch']} {r.get('data', '')}" for r in results.get("main", []) if "failed" in r]
print(f"gpu_check: {sys.argv[1]}: {rows['breakdown']} breakdown rows, {rows['main']} main rows"
      + (f"; failed: {', '.join(failed)}" if failed else ""))
PY
  [ -n "${OUT:-}" ] && cp "$RESULTS" "$OUT/"
else
  echo "gpu_check: no results written"
fi
echo "gpu_check: $SECONDS s in all"
