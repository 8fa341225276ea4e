#!/usr/bin/env bash
# The main job end to end on the embedded default: generated DDD17-format data.
# Usage: examples/demo.sh DIR   (DIR receives every output; default: demo)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo}
TC=.venv/bin/toolchain
mkdir -p "$OUT"

# The two runs of one .net give identical class maps and per-layer spike counts,
# and every layer spikes; otherwise the demo stops.
same_in_lava_and_emulator() { .venv/bin/python scripts/same_in_lava_and_emulator.py "$@"; }

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

echo "== 3. export + run in Lava: quantize to Loihi fixed point, run the .net in Lava and on the emulator"
# Lava (the reference) and the bit-exact emulator each run the whole test split;
# their class maps must be identical, pixel for pixel.
CKPT="$OUT/train/checkpoint.pt"
$TC export --checkpoint "$CKPT" --target loihi-sim --out "$OUT/model.net" --data "$OUT/data" --frames 64
$TC run --net "$OUT/model.net" --data "$OUT/data" --backend lava --workers 2 \
    --json "$OUT/run-lava.json" --out "$OUT/pred-lava"
$TC run --net "$OUT/model.net" --data "$OUT/data" --backend emulator \
    --json "$OUT/run-emulator.json" --out "$OUT/pred-emulator"
same_in_lava_and_emulator "trained net" "$OUT/pred-lava" "$OUT/pred-emulator" "$OUT/run-lava.json" \
    "$OUT/run-emulator.json"
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from toolchain.core.formatting import percent
out = sys.argv[1]
ex = json.load(open(f"{out}/model.net.json"))
lava, emu = json.load(open(f"{out}/run-lava.json")), json.load(open(f"{out}/run-emulator.json"))
rows = [("float (torch)", ex["miou_float"], ex["frames"]), ("quantized (torch)", ex["miou_quantized"], ex["frames"]),
        ("emulator (.net)", emu["miou"], emu["frames"]), ("Lava (.net)", lava["miou"], lava["frames"])]
print(f"   {'execution':<20}{'mIoU %':>8}{'frames':>8}")
for name, miou, n in rows:
    print(f"   {name:<20}{percent(miou, width=8)}{n:>8}")
print(f"   Lava {lava['steps_per_s']:.1f} steps/s, emulator {emu['steps_per_s']:.1f} steps/s")
PY

echo "== 4. studies: ANN twin + conversion, latency sweep, energy, robustness, one report"
# The non-spiking twin trains briefly, converts by threshold balancing (0.7 x the
# 99th percentile of each layer's activations: measured on this set, the paper's
# 0.7 x max leaves the converted net at the majority class up to T=12, p99 gives
# 22% there), and the converted net runs in Lava like a trained one. Small frame
# counts keep this step to a few minutes on 2 CPU cores.
S="$OUT/studies"
SNN="$OUT/train/checkpoint.pt"
$TC train --config examples/ddd17-tiny.yaml --data "$OUT/data" --ann --epochs 2 --out "$OUT/ann"
$TC convert --checkpoint "$OUT/ann/checkpoint.pt" --out "$S/converted/checkpoint.pt" --data "$OUT/data" --frames 64 \
    --percentile 99
$TC export --checkpoint "$S/converted/checkpoint.pt" --out "$S/converted.net" --data "$OUT/data" --frames 8 \
    --set data.time_steps=32
$TC run --net "$S/converted.net" --data "$OUT/data" --backend lava --frames 8 --json "$S/run-converted-lava.json" \
    --out "$S/pred-converted-lava"
$TC run --net "$S/converted.net" --data "$OUT/data" --backend emulator --frames 8 \
    --json "$S/run-converted-emulator.json" --out "$S/pred-converted-emulator"
same_in_lava_and_emulator "converted net" "$S/pred-converted-lava" "$S/pred-converted-emulator" \
    "$S/run-converted-lava.json" "$S/run-converted-emulator.json"
$TC sweep --checkpoint trained="$SNN" --checkpoint converted="$S/converted/checkpoint.pt" \
    --checkpoint ann="$OUT/ann/checkpoint.pt" --steps 4,12,32,64 --frames 8 --data "$OUT/data" --out "$S/sweep"
$TC energy --checkpoint "$SNN" --frames 8 --data "$OUT/data" --out "$S/energy-trained"
$TC energy --checkpoint "$S/converted/checkpoint.pt" --steps 64 --frames 8 --data "$OUT/data" --out "$S/energy-converted"
$TC robustness --checkpoint snn="$SNN" --checkpoint ann="$OUT/ann/checkpoint.pt" --frames 8 --data "$OUT/data" \
    --out "$S/robustness"
$TC report "$OUT" --out "$OUT/report" --title "Demo: spiking-deeplab-tiny on generated DDD17-format data"
echo "   report: $OUT/report/report.md $OUT/report/report.html"
