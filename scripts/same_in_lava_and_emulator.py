"""Stop unless two runs of one .net (`toolchain run --backend lava` and
`--backend emulator`) agree: class-map PNGs identical pixel for pixel on every
frame, the same spike count in every layer, and every layer spiking (a
comparison of silent layers proves nothing); `deploy.agreement` judges.

Usage: python scripts/same_in_lava_and_emulator.py LABEL LAVA_MAPS EMU_MAPS LAVA_JSON EMU_JSON
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from deploy.agreement import Outputs, differences, read_class_maps, silent_layers


def _outputs(maps: str, names: list[str], report: dict) -> Outputs:
    # a run report keeps each layer's mean spikes per frame: one value per layer
    return Outputs(class_maps=read_class_maps(maps, names),
                   counts={layer: [n] for layer, n in report["spikes_per_frame"].items()})


def main(label: str, lava_maps: str, emu_maps: str, lava_json: str, emu_json: str) -> None:
    lava, emu = json.loads(Path(lava_json).read_text()), json.loads(Path(emu_json).read_text())
    names = sorted(p.name for p in Path(emu_maps).glob("*.png"))
    if not names or names != sorted(p.name for p in Path(lava_maps).glob("*.png")):
        sys.exit(f"   {label}: the two runs wrote different class maps ({lava_maps} vs {emu_maps})")
    emu_out = _outputs(emu_maps, names, emu)
    diff = differences(_outputs(lava_maps, names, lava), emu_out)
    differ = [d.frame for d in diff if d.output == "class maps"]
    if differ:
        sys.exit(f"   {label}: Lava and emulator class maps DIFFER: {differ[:5]}")
    print(f"   {label}: Lava and emulator class maps identical on all {len(names)} frames")
    if diff:
        sys.exit(f"   {label}: Lava and emulator spike counts DIFFER: {lava['spikes_per_frame']} vs "
                 f"{emu['spikes_per_frame']}")
    silent = silent_layers(emu_out.counts)
    if silent:
        sys.exit(f"   {label}: layers {silent} never spike, so the comparison proves nothing")
    print(f"   {label}: the same spike count in every layer, every layer spiking")


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(*sys.argv[1:])
