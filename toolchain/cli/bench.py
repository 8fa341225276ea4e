"""`toolchain bench`."""
from __future__ import annotations

import click

from ..core.errors import ToolchainError
from . import quiet_heavy_imports

quiet_heavy_imports()  # before any command of this module loads models


@click.command("bench")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Write the report here.")
@click.option("--quick", is_flag=True, help="A tiny net and a few frames: the table's shape in seconds.")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="Bench this trained model instead of the untrained tiny preset.")
@click.option("--paper-steps", type=int, default=16, show_default=True,
              help="Time steps T of the paper-size frames (Lava runs T+D steps per frame, D the pipeline "
                   "depth; the paper trains with T=20).")
@click.option("--lava-limit", type=float, default=900.0, show_default=True,
              help="Seconds each paper-size model's Lava run (a warm-up frame, then two timed frames) may take; "
                   "past it the frames that finished are compared and Lava's speed is given as an upper bound.")
@click.option("--tiny-only", is_flag=True,
              help="Skip the paper-size cases: the tiny preset at its demo resolution, training and evaluation.")
def bench_cmd(json_path, quick, checkpoint, paper_steps, lava_limit, tiny_only):
    """Lava vs the emulator (steps/s, ratios, build time, peak memory) on the tiny preset and on
    paper-size Spiking DeepLab and Spiking FCN at 200x346, training throughput, and test-split
    evaluation time."""
    from ..bench.suite import run_bench
    from ..bench.table import format_table, write_report

    if paper_steps < 1:
        raise ToolchainError(f"--paper-steps: {paper_steps} is not a positive number of steps")
    report = run_bench(quick=quick, checkpoint=checkpoint, paper_steps=paper_steps, lava_limit=lava_limit,
                       paper=not tiny_only, progress=lambda m: click.echo(f"bench: {m}", err=True))
    click.echo(format_table(report))
    if json_path is not None:
        write_report(report, json_path)
