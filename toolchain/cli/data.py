"""`toolchain data ...`: generate and check DDD17-format data."""
from __future__ import annotations

import time
from pathlib import Path

import click


@click.group()
def data() -> None:
    """Generate and check event-camera segmentation data (DDD17 layout)."""


@data.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to create.")
@click.option("--n-train", default=256, show_default=True, type=int, help="Training frames.")
@click.option("--n-test", default=64, show_default=True, type=int, help="Test frames.")
@click.option("--height", default=200, show_default=True, type=int, help="Frame height (DDD17: 200).")
@click.option("--width", default=346, show_default=True, type=int, help="Frame width (DDD17: 346).")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same files.")
@click.option("--raw-events", is_flag=True, help="Also write each window's events as raw/{split}/<name>.npz "
              "(x, y, t [us], p, width, height, t_start, t_end).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def synth(out, n_train, n_test, height, width, seed, raw_events, force) -> None:
    """Simulate driving scenes and write them in the DDD17 (Ev-SegNet) format.

    \b
    Example:
      toolchain data synth --out data --n-train 256 --n-test 64 --height 100 --width 173
    """
    from ..data.synth import synthesize

    t0 = time.perf_counter()
    root = synthesize(out, n_train, n_test, height, width, seed, raw_events=raw_events, force=force)
    click.echo(f"wrote {n_train} train + {n_test} test frames ({height}x{width}) to {root} "
               f"in {time.perf_counter() - t0:.1f} s")


@data.command()
@click.argument("root", type=click.Path())
@click.option("--out", "out_png", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG gallery here (default ROOT/check.png).")
@click.option("--skip-bad", is_flag=True, help="Skip bad samples with a warning instead of stopping.")
@click.option("--examples", default=2, show_default=True, type=int, help="Samples per split in the gallery.")
def check(root, out_png, skip_bad, examples) -> None:
    """Validate a DDD17-layout folder: counts, class frequencies, channel
    statistics, and a gallery of event channels beside the labels.

    \b
    Example:
      toolchain data check data --out data-check.png
    """
    from ..data.check import check_folder, gallery

    rep = check_folder(root, skip_bad=skip_bad, examples=max(1, examples))
    click.echo(rep.table())
    png = gallery(rep, out_png or Path(root) / "check.png")
    click.echo(f"\ngallery: {png}")
