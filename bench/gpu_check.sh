#!/usr/bin/env bash
# One prepared GPU check (run it on a machine with a GPU, from the repository root):
#   bash bench/gpu_check.sh [OUT_DIR]
# Trains recipes/mobilenet_v2/hotdog/config_full.yaml in bf16 under accelerate (single_gpu.yaml; also
# multi_gpu.yaml when there are several GPUs), then prints a table of validation accuracy before/after and
# training images per second, read from the run's own train_results.json / eval_results.json / trainer_state.
# Then bench/step_breakdown.py (where a step's time goes, in one process: the loader alone, the compute
# ceiling, the step fed by the loader without a Trainer, and trainer.train()) on MobileNetV2 / CIFAR-10 and
# Lite0 / hotdog, and bench/loader_cost.py (what one loader process spends per image, float32 vs 8-bit batches,
# on this machine's cores), then bench/throughput.py on the GPU: images/s of the transformers example vs hf-finetune vs
# the compute ceiling, accuracy after the same steps, MFU, and the GPU ablations. REPEATS (1) and STEPS (100)
# size it; PARTS (default "recipe breakdown main ablations") picks what runs, in that order.
set -euo pipefail
OUT=${1:-${OUT:-gpu_check_output}}
mkdir -p "$OUT"
PY=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d)}  # the trained models; logs and tables go to OUT
RECIPE=recipes/mobilenet_v2/hotdog/config_full.yaml
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -lt 1 ]; then
  echo "gpu_check: no GPU visible (torch.cuda.device_count() == 0)"; exit 2
fi
$PY -c "import torch; print('gpu:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
run() {  # name, accelerate config, extra flags
  local name=$1 config=$2; shift 2
  local start=$(date +%s.%N)
  $PY -m accelerate.commands.launch --config_file "recipes/accelerate_configs/$config.yaml" \
    ${NPROC:+--num_processes "$NPROC"} -m hf_finetune train "$RECIPE" \
    --output_dir "$WORK/$name" --overwrite_output_dir true --bf16 true --report_to none \
    --disable_tqdm true "$@" > "$OUT/$name.log" 2>&1
  local end=$(date +%s.%N)
  $PY - "$WORK/$name" "$name" "$start" "$end" <<'PY'
import json, sys
from pathlib import Path
out, name, start, end = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
train = json.loads((out / "train_results.json").read_text())
state = json.loads((out / "trainer_state.json").read_text())
evals = [e for e in state["log_history"] if "eval_accuracy" in e]
print(f"| {name} | {evals[0]['eval_accuracy']:.2f} | {max(e['eval_accuracy'] for e in evals):.2f} | "
      f"{train['train_samples_per_second']:.1f} | {train['train_runtime']:.1f} | {end - start:.1f} |")
PY
}
PARTS=${PARTS:-recipe breakdown main ablations}
wants() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if wants recipe; then
  echo "| run | accuracy epoch 0 | best accuracy | train images/s | train s | wall s |"
  echo "|---|---|---|---|---|---|"
  run single_gpu_bf16 single_gpu || echo "single_gpu run failed: see $OUT/single_gpu_bf16.log"
  if [ "$NGPU" -gt 1 ]; then
    NPROC=$NGPU run multi_gpu_bf16 multi_gpu || echo "multi_gpu run failed: see $OUT/multi_gpu_bf16.log"
  fi
fi

# Where a step's time goes on this GPU: the loader alone, the ceiling, loader + step without a Trainer, and
# trainer.train(), in one process (the gap between the project and its ceiling, taken apart).
if wants breakdown; then
  echo
  $PY bench/loader_cost.py 2> "$OUT/loader_cost.log" || echo "loader_cost failed: see $OUT/loader_cost.log"
  for pair in "mobilenet_v2 cifar10" "efficientnet_lite0 hotdog"; do
    set -- $pair
    echo
    $PY bench/step_breakdown.py --model "$1" --data "$2" --steps "${STEPS:-100}" --repeats 2 \
      --json "$OUT/breakdown_$1_$2.json" 2> "$OUT/breakdown_$1_$2.log" || echo "breakdown $1 $2 failed: see $OUT/breakdown_$1_$2.log"
  done
fi

# Throughput against the transformers example recipe on this GPU (issue 6): baseline, project defaults and
# compute ceiling, their ratios, accuracy after the same steps, and MFU (FLOPs counted by torch); then what
# each GPU default is worth (bf16, channels_last, the image cache, loader workers, torch.compile).
if wants main; then
  echo
  $PY bench/throughput.py --parts main --repeats "${REPEATS:-1}" --steps "${STEPS:-100}" --json "$OUT/throughput_main.json"
fi
if wants ablations; then
  echo
  $PY bench/throughput.py --parts ablations --steps "${STEPS:-100}" --datasets hotdog --json "$OUT/throughput_ablations.json"
fi
