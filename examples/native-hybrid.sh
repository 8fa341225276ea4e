#!/usr/bin/env bash
# The spiking DeepLab-tiny at DDD17's native 200x346, made from its ANN twin:
# the twin trained, tuned with each layer clipped where a spiking neuron
# saturates, converted by threshold balancing for T steps of the input code,
# tuned again under the spike rates that conversion's neurons measurably reach
# and converted at the same levels, optionally fine-tuned spiking (surrogate
# gradients, Loihi 8-bit weights), then exported and run in Lava and on the
# emulator over the test split (its deploy/ folder: the .net, both runs'
# reports and maps, energy per frame), in about an hour on 2 CPU cores
# (docs/results.md has the figures of each step).
#
# Usage: [TWIN_EPOCHS=80] [CLIP=99] [CLIP_CONV1=99.9] [CLIP_EPOCHS=40] [CLIP_LR=0.001] [TWIN_STEPS=16] \
#            [STEPS=32] [CODE=rate] [TRANSFER_EPOCHS=20] [TUNE_EPOCHS=0] examples/native-hybrid.sh DIR [--set ...]
# DIR receives every output, in folders named by these settings; the --set
# flags (SECTION.FIELD=VALUE) apply to every training (e.g. a data root). Each
# step that finished is skipped, one that was stopped resumes. CLIP is the
# percentile each layer is clipped at, CLIP_CONV1 the first layer's (its clip
# costs the people most); CLIP_EPOCHS=0 converts the plain twin (balanced on
# its 99th-percentile activations). The twin is tuned on TWIN_STEPS steps of
# the input code and converted for STEPS (more steps: closer to the twin,
# more spikes; STEPS=48 converts closer for 1.3x the SynOps).
# TRANSFER_EPOCHS=0 deploys the first conversion. TUNE_EPOCHS>0 fine-tunes the
# conversion spiking, its loss in the twin's units (convert's logit_scale),
# distilled from the twin it was converted from (train.teacher; --set
# train.distill_weight=0 turns that off). Every conversion gives each layer its own
# threshold; without step 3 the net deploys at 65.7% mIoU in Lava, people
# 22.2%, poles 30.1% IoU, 230 M SynOps per frame (with one threshold for the
# net it was 65.3%, and 4 distilled epochs brought it to 65.7%; with a
# threshold for each layer 4 distilled epochs deploy at 65.67%: no gain).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: examples/native-hybrid.sh DIR [--set SECTION.FIELD=VALUE ...]}
shift
TWIN_EPOCHS=${TWIN_EPOCHS:-80} CLIP=${CLIP:-99} CLIP_CONV1=${CLIP_CONV1:-99.9} CLIP_EPOCHS=${CLIP_EPOCHS:-40}
CLIP_LR=${CLIP_LR:-0.001} TWIN_STEPS=${TWIN_STEPS:-16} STEPS=${STEPS:-32} CODE=${CODE:-rate}
TRANSFER_EPOCHS=${TRANSFER_EPOCHS:-20} TUNE_EPOCHS=${TUNE_EPOCHS:-0}
TC=.venv/bin/toolchain
PY=.venv/bin/python
CONFIG=examples/ddd17-native-cpu.yaml
TWIN=$OUT/twin-${TWIN_EPOCHS}ep
SOURCE=$TWIN PERCENTILE=99 TAG=${TWIN_EPOCHS}ep
if [ "$CLIP_EPOCHS" -gt 0 ]; then
    TAG=${TWIN_EPOCHS}ep-clip$CLIP-conv1-$CLIP_CONV1-${CLIP_EPOCHS}ep-lr$CLIP_LR
    SOURCE=$OUT/twin-$TAG-T$TWIN_STEPS-$CODE PERCENTILE=100
fi
CONVERTED=$OUT/converted-$TAG-T$STEPS-$CODE
TUNED=$OUT/tuned-$TAG-T$STEPS-$CODE-${TUNE_EPOCHS}ep

finished() { [ -f "$1/metrics.json" ] && $PY -c 'import json,sys; sys.exit(not json.load(open(sys.argv[1])).get("final"))' "$1/metrics.json"; }
train() {  # train DIR FLAGS...: skipped when finished, resumed when stopped
    local dir=$1; shift
    if finished "$dir"; then echo "   $dir: finished, kept"; return; fi
    if [ -f "$dir/checkpoint.pt" ]; then set -- "$@" --resume; fi
    $TC train --config "$CONFIG" --out "$dir" "$@"
}

echo "== 1. the ANN twin (ReLU, average pooling), same recipe, $TWIN_EPOCHS epochs (20: 54.8% mIoU, 40: 60.2%, 80: 65.1%)"
train "$TWIN" --ann --set train.epochs="$TWIN_EPOCHS" "$@"

if [ "$CLIP_EPOCHS" -gt 0 ]; then
    echo "== 1b. tune the twin for $CLIP_EPOCHS epochs (lr $CLIP_LR) with each layer clipped at the $CLIP-th percentile of its"
    echo "   activations (conv1: the $CLIP_CONV1-th), on the input the spiking net gets: what a neuron firing at"
    echo "   most once a step can carry"
    train "$SOURCE" --ann --set train.init="$TWIN/checkpoint.pt" --set train.ann_clip="$CLIP" \
        --set train.ann_clip_layers.conv1="$CLIP_CONV1" \
        --set train.epochs="$CLIP_EPOCHS" --set train.lr="$CLIP_LR" --set data.time_steps="$TWIN_STEPS" \
        --set data.encoding="$CODE" "$@"
fi

echo "== 2. convert for T=$STEPS of the $CODE code: each layer's weights balanced on its $PERCENTILE-th percentile"
echo "   activation x the scale that starts best on the training frames, and its own threshold"
if [ -f "$CONVERTED/convert.json" ]; then echo "   $CONVERTED: converted, kept"; else
    $TC convert --checkpoint "$SOURCE/checkpoint.pt" --out "$CONVERTED/checkpoint.pt" --percentile "$PERCENTILE" \
        --scale auto --frames 32 --set data.time_steps="$STEPS" --set data.encoding="$CODE"
fi
conversion() {  # a figure of the conversion's convert.json (a list: one --set flag an item)
    $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); k=sys.argv[2]
sys.exit(f"{sys.argv[1]}: no {k} (an older conversion): remove its folder to convert again") if k not in d else \
print(" ".join(f"--set {o}" for o in d[k]) if isinstance(d[k], list) else d[k])' "$CONVERTED/convert.json" "$1"
}
if [ "$TRANSFER_EPOCHS" -gt 0 ]; then
    echo "== 2b. tune the twin for $TRANSFER_EPOCHS epochs under the spike rates its conversion measured (each"
    echo "   layer's rate against its input: below the ReLU's line), then convert it at the levels it was tuned for"
    TRANSFERRED=$OUT/twin-$TAG-T$STEPS-$CODE-transfer-${TRANSFER_EPOCHS}ep
    units=$(conversion transfer_logit_scale)  # the loss in the twin's units: its rates are below its ReLU's
    train "$TRANSFERRED" --ann --set train.init="$SOURCE/checkpoint.pt" \
        --set train.ann_transfer="$CONVERTED/checkpoint.pt" --set train.logit_scale="$units" \
        --set train.epochs="$TRANSFER_EPOCHS" --set train.lr="$CLIP_LR" --set data.time_steps="$STEPS" \
        --set data.encoding="$CODE" "$@"
    TAG=$TAG-transfer-${TRANSFER_EPOCHS}ep SOURCE=$TRANSFERRED
    CONVERTED=$OUT/converted-$TAG-T$STEPS-$CODE TUNED=$OUT/tuned-$TAG-T$STEPS-$CODE-${TUNE_EPOCHS}ep
    if [ -f "$CONVERTED/convert.json" ]; then echo "   $CONVERTED: converted, kept"; else
        $TC convert --checkpoint "$TRANSFERRED/checkpoint.pt" --out "$CONVERTED/checkpoint.pt" --frames 32 \
            --set data.time_steps="$STEPS" --set data.encoding="$CODE"
    fi
fi
DEPLOY=$CONVERTED
if [ "$TUNE_EPOCHS" -gt 0 ]; then
    echo "== 3. fine-tune spiking from the converted weights for $TUNE_EPOCHS epochs, under the converted neurons,"
    echo "   distilled from the twin $SOURCE"
    units=$(conversion logit_scale)
    # the converted neurons: each layer's threshold, no leak (flags without spaces: split on purpose)
    # shellcheck disable=SC2046
    train "$TUNED" --set train.init="$CONVERTED/checkpoint.pt" $(conversion neurons) \
        --set train.logit_scale="$units" --set train.teacher="$SOURCE/checkpoint.pt" --set train.lr=0.001 \
        --set train.epochs="$TUNE_EPOCHS" --set data.time_steps="$STEPS" --set data.encoding="$CODE" "$@"
    DEPLOY=$TUNED
fi

echo "== 4. export, the whole test split in Lava and on the emulator (equal class maps and spike counts), energy"
# (-: the data the net was made with, the generated set at 200x346 by default)
scripts/deploy_run.sh "$DEPLOY" -
