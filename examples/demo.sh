#!/usr/bin/env bash
# The main job end to end on the embedded default: generated DDD17-format data.
# Usage: examples/demo.sh DIR   (DIR receives every output; default: demo)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo}
TC=.venv/bin/toolchain
mkdir -p "$OUT"

echo "== 1. data: generate the default DDD17-format set and check it"
# The same set the default configuration uses (data.synth_*): 256 + 64 frames at 100x173.
$TC data synth --out "$OUT/data" --n-train 256 --n-test 64 --height 100 --width 173 --seed 0 --force
$TC data check "$OUT/data" --out "$OUT/data-check.png"
echo "   picture: $OUT/data-check.png"

echo "== 2. train: spiking-deeplab-tiny, quantization-aware, on the generated set"
# Prints test mIoU of the trained model next to the majority-class baseline and
# the untrained model; curves.png, gallery.png and metrics.json land in $OUT/train.
$TC train --config examples/ddd17-tiny.yaml --data "$OUT/data" --out "$OUT/train"
echo "   pictures: $OUT/train/curves.png $OUT/train/gallery.png"
