"""The `toolchain` command.

Each subcommand lives beside the code it drives and registers itself here;
a subcommand appears only once it works.
"""
from __future__ import annotations

import sys

import click

from . import __version__
from .errors import ToolchainError

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="toolchain")
def cli() -> None:
    """Train spiking segmenters on event-camera data, quantize them to Loihi
    fixed point, export them as .net files and run them in Lava.

    Typical day: `toolchain data synth`, `toolchain train`, `toolchain export
    --target loihi-sim`, `toolchain run`.
    """


def config_options(f):
    """--config FILE and repeated --set section.field=value, for every command
    that takes a configuration."""
    f = click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
                     help="Override one configuration field, e.g. --set train.lr=0.01 (repeatable).")(f)
    f = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                     help="YAML configuration file (see examples/).")(f)
    return f


def _register() -> None:
    import contextlib
    import io

    # lava-dl prints a warning about an optional Prophesee toolbox, and torch's
    # extension loader one about CUDA, when first imported; neither concerns
    # these commands (errors still raise).
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import lava.lib.dl.slayer  # noqa: F401
    from .data.cli import data
    cli.add_command(data)
    from .train.cli import evaluate, models_cmd, train
    cli.add_command(train)
    cli.add_command(evaluate)
    cli.add_command(models_cmd)
    from deploy.cli import export_cmd, run_cmd
    cli.add_command(export_cmd)
    cli.add_command(run_cmd)
    from .studies.cli import convert_cmd, energy_cmd, report_cmd, robustness_cmd, sweep_cmd
    for command in (convert_cmd, sweep_cmd, energy_cmd, robustness_cmd, report_cmd):
        cli.add_command(command)
    from deploy.bench import bench_cmd
    cli.add_command(bench_cmd)
    from deploy.predict import predict_cmd
    cli.add_command(predict_cmd)


_register()


def main(argv: list[str] | None = None) -> None:
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
