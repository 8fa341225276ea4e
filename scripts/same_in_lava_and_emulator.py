"""Stop unless two runs of one .net (`toolchain run --backend lava` and
`--backend emulator`) agree: identical class-map PNGs on every frame, the same
spike count in every layer, and every layer spiking (a comparison of silent
layers proves nothing).

Usage: python scripts/same_in_lava_and_emulator.py LABEL LAVA_MAPS EMU_MAPS LAVA_JSON EMU_JSON
"""
from __future__ import annotations

import filecmp
import json
import sys
from pathlib import Path


def main(label: str, lava_maps: str, emu_maps: str, lava_json: str, emu_json: str) -> None:
    lava, emu = json.loads(Path(lava_json).read_text()), json.loads(Path(emu_json).read_text())
    names = sorted(p.name for p in Path(emu_maps).glob("*.png"))
    if not names or names != sorted(p.name for p in Path(lava_maps).glob("*.png")):
        sys.exit(f"   {label}: the two runs wrote different class maps ({lava_maps} vs {emu_maps})")
    _, differ, errors = filecmp.cmpfiles(lava_maps, emu_maps, names, shallow=False)
    if differ or errors:
        sys.exit(f"   {label}: Lava and emulator class maps DIFFER: {(differ + errors)[:5]}")
    print(f"   {label}: Lava and emulator class maps identical on all {len(names)} frames")
    if lava["spikes_per_frame"] != emu["spikes_per_frame"]:
        sys.exit(f"   {label}: Lava and emulator spike counts DIFFER: {lava['spikes_per_frame']} vs "
                 f"{emu['spikes_per_frame']}")
    silent = [k for k, v in emu["spikes_per_frame"].items() if v == 0]
    if silent:
        sys.exit(f"   {label}: layers {silent} never spike, so the comparison proves nothing")
    print(f"   {label}: the same spike count in every layer, every layer spiking")


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(*sys.argv[1:])
