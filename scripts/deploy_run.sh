#!/usr/bin/env bash
# A trained run deployed as users deploy it, and checked: export to a .net (float
# and quantized torch mIoU and per-class IoU on the test frames), the .net over
# the same test frames on the emulator and in Lava (their class maps and
# per-layer spike counts must be identical, every layer spiking), energy per frame.
# Usage: [FRAMES=N] [NAME=deploy] scripts/deploy_run.sh RUN DATA [export options, e.g. --set data.height=200]
#   DATA: a data root, or - for the data in RUN/checkpoint.pt's configuration (a
#   root, or the generated set it made; also for a `toolchain convert` output);
#   FRAMES: test frames (default: the whole split); writes RUN/NAME/.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,9p "$0"; exit 2; }
RUN=$1 DATA=$2
shift 2
TC=.venv/bin/toolchain
D=$RUN/${NAME:-deploy}
mkdir -p "$D"
SRC=(--data "$DATA")
if [ "$DATA" = - ]; then  # the checkpoint's configuration as a file, for the commands' --config
    SRC=(--config "$D/config.yaml")
    DATA=$(.venv/bin/python -c 'import sys
from toolchain.core import checkpoint
from toolchain.core.config import config_from_dict, save_config
cfg = config_from_dict(checkpoint.load(sys.argv[1])["config"])
save_config(cfg, sys.argv[2])
print(cfg.data.root or "")' "$RUN/checkpoint.pt" "$D")
fi
ENERGY_DATA=()  # energy on a .net without a root: the generated set at the net's size
[ -n "$DATA" ] && ENERGY_DATA=(--data "$DATA")
FR=()
[ -n "${FRAMES:-}" ] && FR=(--frames "$FRAMES")
$TC export --checkpoint "$RUN/checkpoint.pt" --out "$D/model.net" "${SRC[@]}" --frames "${FRAMES:-1000000}" "$@"
for backend in emulator lava; do
    rm -rf "$D/pred-$backend"
    W=()
    [ $backend = lava ] && W=(--workers 2)
    $TC run --net "$D/model.net" "${SRC[@]}" --backend $backend "${W[@]}" "${FR[@]}" \
        --json "$D/run-$backend.json" --out "$D/pred-$backend"
done
.venv/bin/python scripts/same_in_lava_and_emulator.py "$D/model.net" "$D/pred-lava" "$D/pred-emulator" \
    "$D/run-lava.json" "$D/run-emulator.json"
$TC energy --checkpoint "$D/model.net" --frames "${FRAMES:-16}" "${ENERGY_DATA[@]}" --out "$D/energy"
