"""The ``edge-agent`` command line: a click group of thin commands.

Commands are imported lazily (Polygraphy's habit): ``edge-agent --help``
stays fast and lists every command even when one of them cannot be imported
on this machine; invoking that one prints why instead of a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from edge_agent import __version__
from edge_agent.errors import EdgeAgentError

# name -> (module, attribute, one-line help shown by --help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("edge_agent.cli.run", "run", "Run the agent daemon beside the scanner."),
    "demo": ("edge_agent.cli.demo", "demo", "Show a real alert end to end with no external services."),
    "infer": ("edge_agent.cli.infer", "infer", "Analyse DICOM files/folders once; JSON Lines per series."),
    "simulate": ("edge_agent.cli.simulate", "simulate", "Write phantom CT series into a folder like a scanner."),
    "listen": ("edge_agent.cli.listen", "listen", "Reference consumer: print, deduplicate and acknowledge alerts."),
    "convert": ("edge_agent.cli.engine", "convert", "Build a TensorRT engine from an ONNX model for this device."),
    "calibrate": ("edge_agent.cli.engine", "calibrate", "INT8-quantise an ONNX model with real DICOM series (Q/DQ)."),
    "inspect": ("edge_agent.cli.engine", "inspect_cmd", "Describe an ONNX model or engine and whether it fits here."),
    "bench": ("edge_agent.cli.bench", "bench", "Measure latency and throughput per stage and backend."),
    "doctor": ("edge_agent.cli.doctor", "doctor", "Check this machine: GPU, TensorRT, inotify, disk, broker, clock."),
    "validate": ("edge_agent.cli.validate", "validate", "Measure a model on a site's own labelled series; a report."),
    "report": ("edge_agent.cli.report", "report", "What the agent did (and in shadow mode would have alerted)."),
}


def _unavailable(name: str, reason: str) -> click.Command:
    def callback(**_kwargs):
        raise click.ClickException(f"'{name}' is unavailable on this installation: {reason}.")

    return click.Command(name, callback=callback, help=f"(unavailable: {reason})",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            return _unavailable(name, f"{type(exc).__name__}: {exc}")

    def format_commands(self, ctx, formatter):
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-agent")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--log-json", is_flag=True, help="Log as JSON lines (for journald/log shippers).")
def cli(verbose: int, log_json: bool) -> None:
    """edge-agent: critical-finding alerts from CT series, at the scanner.

    Demo models are trained on synthetic phantoms; they are not medical devices.
    """
    from edge_agent.logs import setup_logging

    setup_logging(verbose=verbose, json_lines=log_json)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one sentence and a non-zero exit."""
    try:
        cli.main(args=argv, prog_name="edge-agent", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgeAgentError as exc:
        click.echo(f"edge-agent: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last boundary: never a traceback
        logging.getLogger("edge_agent").debug("unexpected error", exc_info=True)
        click.echo(f"edge-agent: unexpected error ({type(exc).__name__}: {exc}); "
                   "run again with -vv for details and report it.", err=True)
        sys.exit(1)
    else:
        sys.exit(0)
