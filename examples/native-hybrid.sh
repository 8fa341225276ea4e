#!/usr/bin/env bash
# The spiking DeepLab-tiny at DDD17's native 200x346 trained as a hybrid: its
# ANN twin first, converted by threshold balancing into the spiking net's
# starting weights, then fine-tuned spiking (surrogate gradients, Loihi 8-bit
# weights), exported and run in Lava and on the emulator over the test split
# (its deploy/ folder: the .net, both runs' reports and maps, energy per frame).
# On the generated set this reaches 50.6% mIoU in about 15 minutes on 2 CPU
# cores, where training spiking from scratch for 10 epochs reaches 31.6%
# (docs/results.md).
#
# Usage: [TWIN_EPOCHS=40] [STEPS=8] [CODE=poisson] [TUNE_EPOCHS=10] examples/native-hybrid.sh DIR [--set ...]
# DIR receives every output, in folders named by these settings; the --set
# flags (SECTION.FIELD=VALUE) apply to both trainings (e.g. a data root). Each
# step that finished is skipped, one that was stopped resumes. TUNE_EPOCHS=0
# deploys the converted net itself: at T=16 of the rate code the conversion of
# an 80-epoch twin keeps the thin classes best (TWIN_EPOCHS=80 STEPS=16
# CODE=rate TUNE_EPOCHS=0: 54.5% mIoU, object 13.2, human 10.0), where spiking
# fine-tunes lose them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: examples/native-hybrid.sh DIR [--set SECTION.FIELD=VALUE ...]}
shift
TWIN_EPOCHS=${TWIN_EPOCHS:-40} STEPS=${STEPS:-8} CODE=${CODE:-poisson} TUNE_EPOCHS=${TUNE_EPOCHS:-10}
TC=.venv/bin/toolchain
PY=.venv/bin/python
CONFIG=examples/ddd17-native-cpu.yaml
TWIN=$OUT/twin-${TWIN_EPOCHS}ep
CONVERTED=$OUT/converted-${TWIN_EPOCHS}ep-T$STEPS-$CODE
TUNED=$OUT/tuned-${TWIN_EPOCHS}ep-T$STEPS-$CODE-${TUNE_EPOCHS}ep

finished() { [ -f "$1/metrics.json" ] && $PY -c 'import json,sys; sys.exit(not json.load(open(sys.argv[1])).get("final"))' "$1/metrics.json"; }
train() {  # train DIR FLAGS...: skipped when finished, resumed when stopped
    local dir=$1; shift
    if finished "$dir"; then echo "   $dir: finished, kept"; return; fi
    if [ -f "$dir/checkpoint.pt" ]; then set -- "$@" --resume; fi
    $TC train --config "$CONFIG" --out "$dir" "$@"
}

echo "== 1. the ANN twin (ReLU, average pooling), same recipe, $TWIN_EPOCHS epochs (20: 54.8% mIoU, 40: 60.2%, 80: 65.1%)"
train "$TWIN" --ann --set train.epochs="$TWIN_EPOCHS" "$@"

echo "== 2. convert for T=$STEPS of the $CODE code: one threshold for the net, each layer's weights balanced on its"
echo "   99th-percentile activation x the scale that starts best on the training frames"
# (at T=8 a scale 0.05 off can halve the start)
if [ -f "$CONVERTED/convert.json" ]; then echo "   $CONVERTED: converted, kept"; else
    $TC convert --checkpoint "$TWIN/checkpoint.pt" --out "$CONVERTED/checkpoint.pt" --percentile 99 \
        --scale auto --frames 32 --set data.time_steps="$STEPS" --set data.encoding="$CODE"
fi
DEPLOY=$CONVERTED
if [ "$TUNE_EPOCHS" -gt 0 ]; then
    echo "== 3. fine-tune spiking from the converted weights for $TUNE_EPOCHS epochs, under the converted neurons"
    THRESHOLD=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["threshold"])' "$CONVERTED/convert.json")
    train "$TUNED" --set train.init="$CONVERTED/checkpoint.pt" --set model.threshold="$THRESHOLD" \
        --set model.voltage_decay=0.0 --set train.lr=0.001 --set train.epochs="$TUNE_EPOCHS" \
        --set data.time_steps="$STEPS" --set data.encoding="$CODE" "$@"
    DEPLOY=$TUNED
fi

echo "== 4. export, the whole test split in Lava and on the emulator (equal class maps and spike counts), energy"
# (-: the data the net was made with, the generated set at 200x346 by default)
scripts/deploy_run.sh "$DEPLOY" -
