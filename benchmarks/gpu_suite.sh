#!/usr/bin/env bash
# visattn's GPU figures in one go (about 8 minutes on one H100/H200-class GPU):
#   1. bench blocks   each block's forward+backward time and memory against its timm twin
#   2. bench train    training throughput of ResNet-18 with each block (bf16, channels_last)
#   3. bench cams     Grad-CAM & co. against pytorch-grad-cam
#   4. CIFAR-10       one configs/cifar10_gpu.yaml run: wall time to its test accuracy (target: >= 94 %)
#
#   DATA=/data/cifar10 bash benchmarks/gpu_suite.sh          # DATA holds train/<class>/*.jpg and test/<class>/*.jpg
#   DATA_TAR=cifar10-jpg.tar.gz bash benchmarks/gpu_suite.sh # or an archive of that layout, extracted to a temp dir
#
# OUT (default ./gpu_suite) receives each step's output. SMOKE=1 DEVICE=cpu runs every step at toy size on a CPU
# (the test suite does that). Without DATA or DATA_TAR step 4 is skipped, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-gpu_suite}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"

if [ "${SMOKE:-0}" = "1" ]; then
  blocks_args=(--quick)
  train_args=(--batch-size 8 --steps 1)
  cams_args=(--quick --models resnet18 --methods gradcam --no-memory)
  cifar_args=(loop.epochs=1 loop.compile=false data.batch_size=8 data.num_workers=0 data.val_split=4
              "model.kwargs={layers: [1, 1, 1, 1], channels: [8, 8, 8, 8], stem_width: 8}")
else
  blocks_args=()
  train_args=(--batch-size 256 --steps 10 --amp bf16 --channels-last)
  cams_args=()
  cifar_args=()
fi

step() {  # step NAME COMMAND...: run, tee to $OUT/NAME.txt, print its wall time
  local name="$1"; shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" 2>&1 | tee "$OUT/$name.txt"
  echo "== $name took $((SECONDS - start)) s"
}

"$PY" -c "from visattn.system.machine import describe_machine; print(describe_machine())" | tee "$OUT/machine.txt"
step bench_blocks "$PY" -m visattn bench blocks --device "$DEVICE" --markdown "${blocks_args[@]}"
step bench_train "$PY" -m visattn bench train --device "$DEVICE" "${train_args[@]}"
step bench_cams "$PY" -m visattn bench cams --device "$DEVICE" --markdown "${cams_args[@]}"

if [ -n "${DATA_TAR:-}" ] && [ -z "${DATA:-}" ]; then
  DATA="$(mktemp -d)"
  tar xzf "$DATA_TAR" -C "$DATA"
fi
if [ -z "${DATA:-}" ]; then
  echo "== cifar10: skipped (set DATA to a folder with train/ and test/, or DATA_TAR to an archive of it)"
  exit 0
fi
step cifar10 "$PY" -m visattn train --config configs/cifar10_gpu.yaml "data.root=$DATA/train" \
  "data.val_root=$DATA/test" "loop.device=$DEVICE" "checkpoint.output_dir=$OUT/runs" loop.progress=false \
  "${cifar_args[@]}"
"$PY" - "$OUT/runs/cifar10_gpu/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
verdict = "reached" if s["test_acc"] >= 0.94 else "missed"
print(f"CIFAR-10 time-to-94 %: {s['train_seconds']:.0f} s of training, test top-1 {100 * s['test_acc']:.2f} % "
      f"after {s['epochs']} epochs ({verdict} 94 %)")
EOF
