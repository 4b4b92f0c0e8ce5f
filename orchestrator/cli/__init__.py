"""The ``wcscan`` command line: click commands, one module each, that parse, call one job and print.

:func:`main` runs the root group. Every error a user can cause ends as one
line ``wcscan: error: <message>`` on stderr and exit status 2; an interrupt
exits 130; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from kernels.errors import WcscanError
from orchestrator.cli.bench import bench
from orchestrator.cli.bounds import bounds
from orchestrator.cli.common import setup
from orchestrator.cli.fit import fit
from orchestrator.cli.generate import generate
from orchestrator.cli.globalfit import globalfit
from orchestrator.cli.images import images
from orchestrator.cli.run import run
from orchestrator.cli.track import track
from orchestrator.cli.tune import tune
from orchestrator.cli.validate import validate
from orchestrator.runtime.ray import quiet_token_notice

__all__ = ["main", "wcscan"]

PROG = "wcscan"

EPILOG = """\b
Examples:
  wcscan run                         # the whole job on the demo config, into out/demo
  wcscan generate --dc9 -2:1.1:22 --events 24000 --seed 1 --out out/events
  wcscan fit --dataset out/events --events-per-set 2000 --sets 10 --out out/fit.csv
  wcscan images --dataset out/events --bins 16 --events-per-image 2000 --images-per-point 10 --out out/images
  wcscan tune --model deepsets --dataset out/events --num-samples 16
  wcscan bounds --out out/bounds.csv   # sigma_CRB against luminosity, form factors fixed and profiled
  wcscan track out/demo --tracking-uri http://127.0.0.1:5000   # log a finished job to MLflow (later)
  wcscan bench generate --json

Run 'wcscan COMMAND --help' for the options of a command.
"""


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="wcscan", prog_name=PROG)
def wcscan():
    """Scan Wilson coefficients with flavio Monte Carlo, train estimators of delta C9, and measure them
    against the unbinned ML fit and the Cramer-Rao bound."""


for _command in (generate, fit, images, validate, run, tune, globalfit, bounds, track, bench):
    wcscan.add_command(_command)


def _error(message: str) -> int:
    line = " ".join(str(message).split())
    sys.stderr.write(f"{PROG}: error: {line}\n")
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    setup(verbose)
    if not any(a == "--address" or a.startswith("--address=") for a in argv) and not os.environ.get("RAY_ADDRESS"):
        quiet_token_notice()  # a local Ray: before anything imports ray
    try:
        rv = wcscan.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:  # `wcscan` alone: the help, exit 0
        click.echo(err.ctx.get_help() if err.ctx else str(err))
        return 0
    except click.UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        return _error(f"{err.format_message()}{hint}")
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt) as err:
        detail = f": {err}" if str(err) else ""
        sys.stderr.write(f"{PROG}: interrupted{detail}\n")
        return 130
    except WcscanError as err:
        return _error(err)
    except OSError as err:  # the file system refused (full disk, permissions): one line, not a traceback
        where = f": {err.filename}" if err.filename else ""
        return _error(f"{err.strerror or err}{where}")
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
