"""The `toolchain` command: the only module tree that imports click.

Subcommands live in this package, one module per area (data, train, deploy,
studies, bench), and are imported only when named, so `toolchain --help`
answers without loading torch or Lava.
"""
from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..core.allocator import keep_freed_memory
from ..core.errors import ToolchainError

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)

# command name -> (module in this package, attribute, one-line help)
COMMANDS = {
    "data": ("data", "data", "Generate and check event-camera segmentation data (DDD17 layout)."),
    "train": ("train", "train", "Train a spiking (or twin) segmentation network."),
    "eval": ("train", "evaluate", "Evaluate a training checkpoint's torch model on a split."),
    "models": ("train", "models_cmd", "List the registered networks and their sizes."),
    "upgrade-checkpoint": ("train", "upgrade_checkpoint_cmd",
                           "Rewrite a toolchain 0.1 checkpoint in the format that cannot run code."),
    "export": ("deploy", "export_cmd", "Quantize a trained model to Loihi fixed point; write .net, ONNX or NIR."),
    "import": ("deploy", "import_cmd", "Import a NIR graph (snntorch, norse, toolchain) as a Loihi .net file."),
    "run": ("deploy", "run_cmd", "Run a .net over a data split: mIoU, speed, spikes per layer."),
    "predict": ("deploy", "predict_cmd", "Segment an event recording window by window."),
    "convert": ("studies", "convert_cmd", "Convert a trained ANN twin into a spiking network."),
    "sweep": ("studies", "sweep_cmd", "mIoU against the number of time steps T."),
    "energy": ("studies", "energy_cmd", "Spikes, synaptic operations, energy per frame, Loihi 2 resources."),
    "pareto": ("studies", "pareto_cmd", "The accuracy-energy front: fine-tune under SynOps budgets, deploy each point."),
    "robustness": ("studies", "robustness_cmd", "mIoU under input corruptions, SNN against ANN."),
    "report": ("studies", "report_cmd", "One HTML page summarising runs and studies."),
    "bench": ("bench", "bench_cmd", "Lava against the emulator, training throughput, evaluation time."),
}


def quiet_heavy_imports() -> None:
    """Import lava-dl with its import-time notices silenced: it prints a warning
    about an optional Prophesee toolbox, torch's extension loader one about
    CUDA; neither concerns these commands (errors still raise). Called by the
    command modules that load models, not by `toolchain data`."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import lava.lib.dl.slayer  # noqa: F401


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)

    def format_commands(self, ctx, formatter):
        # the one-line help from the table above: listing commands imports nothing
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, _, text) in COMMANDS.items()])


def config_options(f):
    """--config FILE and repeated --set section.field=value, for every command
    that takes a configuration."""
    f = click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
                     help="Override one configuration field, e.g. --set train.lr=0.01 (repeatable).")(f)
    f = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                     help="YAML configuration file (see examples/).")(f)
    return f


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="toolchain")
def cli() -> None:
    """Train spiking segmenters on event-camera data, quantize them to Loihi
    fixed point, export them as .net files and run them in Lava.

    Typical day: `toolchain data synth`, `toolchain train`, `toolchain export
    --target loihi-sim`, `toolchain run`.
    """


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()  # before any command loads torch
    try:
        cli.main(args=argv, prog_name="toolchain", standalone_mode=False)
    except ToolchainError as e:
        click.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
