"""The ``wcscan`` command line: parse, call the orchestrator, print.

Every error a user can cause ends as one line ``wcscan: error: <message>`` on
stderr and exit status 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from kernels.errors import WcscanError

__all__ = ["main", "build_parser", "parse_dc9", "parse_window", "parse_column_map"]

PROG = "wcscan"
DEFAULT_WINDOW = (1.1, 6.0)
# Options whose value may start with '-' (a negative number); see _join_option_values.
_VALUE_OPTIONS = ("--dc9", "--q2-window")


class UsageError(Exception):
    """A command-line value argparse refused; reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(message)


# --- value parsers --------------------------------------------------------------


def _finite(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{what}: {text.strip()!r} is not a finite number")
    return value


def parse_dc9(text: str) -> list[float]:
    """Scan points from ``START:STOP:NUM`` (inclusive, like numpy.linspace) or ``A,B,C``.

    >>> parse_dc9("-1:1:5")
    [-1.0, -0.5, 0.0, 0.5, 1.0]
    >>> parse_dc9("-1.5,0")
    [-1.5, 0.0]
    """
    text = text.strip()
    if not text:
        raise argparse.ArgumentTypeError("empty value; expected START:STOP:NUM or a comma list")
    if ":" in text:
        fields = text.split(":")
        if len(fields) != 3:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected START:STOP:NUM, e.g. -2:1.1:22"
            )
        start = _finite(fields[0], "START")
        stop = _finite(fields[1], "STOP")
        try:
            num = int(fields[2])
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: NUM must be a whole number of points, got {fields[2].strip()!r}"
            ) from None
        if num < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: NUM must be at least 1, got {num}")
        if num == 1:
            return [start]
        step = (stop - start) / (num - 1)
        values = [start + i * step for i in range(num - 1)] + [stop]
        return values
    items = text.split(",")
    if any(not item.strip() for item in items):
        raise argparse.ArgumentTypeError(f"{text!r}: empty value in the comma list")
    return [_finite(item, "value") for item in items]


def parse_window(text: str) -> tuple[float, float]:
    """A q2 window ``LO,HI`` in GeV^2.

    >>> parse_window("1.1,6")
    (1.1, 6.0)
    """
    fields = text.split(",")
    if len(fields) != 2:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO,HI in GeV^2, e.g. 1.1,6.0")
    return _finite(fields[0], "LO"), _finite(fields[1], "HI")


def _join_option_values(argv: Sequence[str]) -> list[str]:
    """Turn ``--dc9 -2:1:5`` into ``--dc9=-2:1:5`` so argparse does not read ``-2:1:5`` as an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            out.extend(argv[i:])
            break
        if tok in _VALUE_OPTIONS and i + 1 < len(argv):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


# --- parser ---------------------------------------------------------------------

_MAIN_EXAMPLES = """\
examples:
  wcscan generate --dc9 -2:1.1:22 --events 24000 --seed 1 --out out/events
  wcscan fit --dataset out/events --events-per-set 2000 --sets 50 --out out/fit.csv
  wcscan images --dataset out/events --bins 16 --events-per-image 2000 --images-per-point 10 --out out/images
  wcscan tune --model deepsets --dataset out/events --num-samples 16
  wcscan bench generate --json

Run 'wcscan <command> --help' for the options of a command.
"""

_GENERATE_EXAMPLES = """\
examples:
  # 22 points from dC9 = -2 to 1.1 (inclusive), 24k events each, default q2 window
  wcscan generate --dc9 -2:1.1:22 --events 24000 --seed 1 --out out/events

  # three explicit points, two q2 windows
  wcscan generate --dc9 -1.5,0,1 --events 200000 \\
      --q2-window 1.1,6.0 --q2-window 15,19 --out out/events

  # on Ray: 2 local workers, or the cluster at $RAY_ADDRESS / --address
  wcscan generate --dc9 -2:1.1:22 --events 24000 --workers 2 --out out/events
  wcscan generate --dc9 -2:1.1:22 --events 24000 --address ray://head:10001 --out out/events

  # detector level with background
  wcscan generate --dc9 -1:1:5 --events 100000 --level det_bkg --out out/events-det

The output directory receives level=<level>/point=NNN/part-KKKKK.parquet files,
a progress journal _progress/ and, last, manifest.json. If it already holds
(part of) a dataset with the same config, the run resumes: finished parts are
verified and kept, missing ones made; a complete dataset is left as it is. A
different config is refused, naming the fields that differ.
"""

_FIT_EXAMPLES = """\
examples:
  # 50 sets of 2000 events per point; needs >= 100000 events per point
  wcscan fit --dataset out/events --events-per-set 2000 --sets 50 --out out/fit.csv

  # your own events: one point per value of the truth column dc9_gen
  wcscan fit --events-file my.parquet --column-map q2=Q2,cos_theta_mu=ctl \\
      --dc9-column dc9_gen --events-per-set 2000 --sets 20

  # a ROOT ntuple (pip install 'wcscan[root]'), all rows at one known truth
  wcscan fit --events-file my.root:events --dc9-true -0.8 --events-per-set 2000 --sets 20

Sets are consecutive disjoint blocks of each point's events, in stored (file)
order. Without --dc9-column, --dc9-true or a dc9 column the truth is unknown:
bias, mse and the pulls are nan and sigma_crb is taken at the mean estimate.

The CSV has one row per point: dc9_true, n_sets, n_events, mean, bias, sigma,
sigma_left, sigma_right, sigma_crb, sigma_over_crb, mse, pull_mean, pull_width.
"""

_BENCH_EXAMPLES = """\
examples:
  wcscan bench generate          # a table of timings
  wcscan bench fit --json        # machine-readable
  wcscan bench images --json     # voxel images vs scipy binned_statistic_dd
  wcscan bench scan --json       # Ray generation, 1 worker vs 2, seed-study projection
  wcscan bench resnet --json     # ResNet-34, 50^3, batch 32, AMP: training images/s (a GPU node)
  wcscan bench resnet --depth 10 --bins 16 --width 16 --batch 8   # something a laptop CPU finishes
"""


_IMAGES_EXAMPLES = """\
examples:
  # the seed study's images: 50^3 voxels, 24k events each, 3300 train+val
  # images per point (20% val) and 900 test images from independent MC
  wcscan images --dataset out/events --bins 50 --events-per-image 24000 \\
      --images-per-point 3300 --test-images 900 --out out/images

  # a laptop-sized set: 16^3 voxels
  wcscan images --dataset out/events --bins 16 --events-per-image 2000 \\
      --images-per-point 50 --out out/images16

  # streaming: images straight from the sampler, no events stored
  wcscan images --stream --dc9 -2:1.1:22 --bins 16 --events-per-image 2000 \\
      --images-per-point 50 --seed 1 --out out/images16

  # your own events (train/val only); map your column names to wcscan's
  wcscan images --events-file my.parquet --column-map q2=Q2,cos_theta_mu=ctl \\
      --bins 16 --events-per-image 2000 --images-per-point 10 --out out/mine

--bins 50 --events-per-image 24000 reproduces the seed study. Train and val
images use disjoint consecutive blocks of each point's events (train first);
test images come from fresh MC seeded (seed, point, 1000000 + k). The output
receives split=<train|val|test>/point=NNN.npy, float32 arrays of shape
(images, 2, B, B, B): channel 0 the mean q2 per voxel (--fill where empty),
channel 1 the event count; manifest.json is written last.
"""


def parse_column_map(text: str) -> dict[str, str]:
    """``NAME=COLUMN,...`` (wcscan name = the file's column) as load_events' file -> wcscan map.

    >>> parse_column_map("q2=Q2,cos_theta_mu=ctl")
    {'Q2': 'q2', 'ctl': 'cos_theta_mu'}
    """
    from kernels.event_store import COLUMNS

    mapping: dict[str, str] = {}
    for item in text.split(","):
        name, sep, column = (s.strip() for s in item.partition("="))
        if not sep or not name or not column:
            raise argparse.ArgumentTypeError(f"{item.strip()!r}: expected NAME=COLUMN, e.g. q2=Q2")
        if name not in (*COLUMNS, "dc9"):
            raise argparse.ArgumentTypeError(
                f"{name!r} is not a wcscan column (one of {', '.join((*COLUMNS, 'dc9'))})"
            )
        if column in mapping:
            raise argparse.ArgumentTypeError(f"column {column!r} is mapped twice")
        mapping[column] = name
    return mapping


def _add_images_parser(sub, common, fmt) -> None:
    img = sub.add_parser(
        "images",
        parents=[common],
        help="turn events into a voxel-image dataset (mean q2, occupancy)",
        description="Bin events in (cos_theta_mu, cos_theta_k, chi) into voxel images with two\n"
        "channels, the mean q2 and the event count per voxel, and write train, val and\n"
        "test splits per scan point as memory-mappable .npy files with a manifest.",
        epilog=_IMAGES_EXAMPLES,
        formatter_class=fmt,
        allow_abbrev=False,
    )
    src = img.add_argument_group("events (one of)")
    src.add_argument("--dataset", type=Path, metavar="DIR", help="event dataset from 'wcscan generate'")
    src.add_argument("--events-file", type=Path, metavar="FILE",
                     help="your own events: a Parquet file, or ROOT as FILE.root[:TREE] (needs uproot)")
    src.add_argument(
        "--stream", action="store_true", help="sample every split straight into images (needs --dc9)"
    )
    img.add_argument(
        "--column-map",
        type=parse_column_map,
        metavar="NAME=COL,...",
        help="with --events-file: wcscan column = the file's column, e.g. q2=Q2,cos_theta_mu=ctl",
    )
    img.add_argument("--bins", type=int, required=True, metavar="B", help="bins per angle (50 = seed, 16 = laptop)")
    img.add_argument("--events-per-image", type=int, required=True, metavar="N", help="events in each image")
    img.add_argument(
        "--images-per-point", type=int, metavar="K", help="train + val images per scan point (required unless --stream --events)"
    )
    img.add_argument(
        "--val-fraction", type=float, default=0.2, metavar="F", help="fraction of the K images for val (default: 0.2)"
    )
    img.add_argument(
        "--test-images", type=int, metavar="T", help="test images per point from fresh MC (default: as many as val)"
    )
    img.add_argument(
        "--seed", type=int, metavar="S", help="seed of the sampled MC (default: the dataset's seed, else 0)"
    )
    img.add_argument(
        "--level", default="gen", choices=("gen", "det", "det_bkg"), help="with --dataset: event level (default: gen)"
    )
    img.add_argument(
        "--fill", type=float, default=0.0, metavar="V", help="mean q2 of an empty voxel: a number or nan (default: 0)"
    )
    img.add_argument(
        "--dc9", type=parse_dc9, metavar="SPEC", help="with --stream: scan points, START:STOP:NUM or A,B,..."
    )
    img.add_argument(
        "--q2-window",
        dest="q2_windows",
        type=parse_window,
        action="append",
        metavar="LO,HI",
        help="with --stream: q2 window in GeV^2; repeat for several (default: 1.1,6.0)",
    )
    img.add_argument(
        "--events", type=int, metavar="N", help="with --stream: train + val events per point (sets K = N / events-per-image)"
    )
    img.add_argument("--out", type=Path, required=True, metavar="DIR", help="new image-dataset directory")
    img.add_argument("--workers", type=int, default=0, metavar="N",
                     help="Ray tasks in flight, one per (point, split) (default 0: in this process)")
    img.add_argument("--address", default=None, metavar="ADDR", help="join this Ray cluster (with --workers)")
    img.set_defaults(handler=_cmd_images)


_VALIDATE_EXAMPLES = """\
examples:
  wcscan validate                          # dC9 = 0 and -1, 10^6 events each
  wcscan validate --dc9 -2,0,1 --events 2000000 --fit-sets 200

Events are drawn from the theory tables; AFB comes from <cos theta_mu>, FL and
S3..S9 from the method of moments (orthogonality of the angular functions).
Each is compared with flavio's binned prediction: the pull is (events - flavio)
/ statistical error. The last table fits toy sets and compares the spread with
the Cramer-Rao bound.
"""


def _add_validate_parser(sub, common, fmt) -> None:
    val = sub.add_parser(
        "validate",
        parents=[common],
        help="check the generator against flavio and the fit against the Cramer-Rao bound",
        description="Generate events, measure binned observables from them and compare with flavio; "
        "fit toy sets and compare their spread with sigma_CRB.",
        epilog=_VALIDATE_EXAMPLES,
        formatter_class=fmt,
        allow_abbrev=False,
    )
    val.add_argument("--dc9", type=parse_dc9, default=[0.0, -1.0], metavar="LIST|START:STOP:NUM",
                     help="delta C9 values (default: 0,-1)")
    val.add_argument("--events", type=int, default=1_000_000, help="events per value (default: 10^6)")
    val.add_argument("--fit-sets", type=int, default=100, help="toy sets for the fit check (default: 100; 0 skips)")
    val.add_argument("--events-per-set", type=int, default=24_000, help="events per toy set (default: 24000)")
    val.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    val.set_defaults(handler=_cmd_validate)


_RUN_EXAMPLES = """\
examples:
  wcscan run                                   # the demo config into out/demo
  wcscan run --config gen24k --out out/gen24k  # the generator-level study
  wcscan run --config my.yaml --tracking-uri http://127.0.0.1:5000
  wcscan run --config demo --workers 0         # no Ray: generate in this process

Shipped configs: demo, gen24k, det_bkg24k, seed-resnet34 (orchestrator/configs/).
Writes OUT/report.md, OUT/evaluation/<estimator>/points.csv and OUT/figures/;
MLflow defaults to sqlite:///OUT/mlflow.db (a parent run, one child per
estimator). Compare the estimators in the UI:
  mlflow ui --backend-store-uri sqlite:///$PWD/OUT/mlflow.db
"""


def _add_run_parser(sub, common, fmt) -> None:
    run = sub.add_parser(
        "run",
        parents=[common],
        help="the whole job: generate, images, train, evaluate against the CRB, MLflow",
        description="Run the main job of a config: generate events on Ray, build images, train the 3D ResNet, "
        "Deep Sets and the event-by-event classifier, evaluate them and the ML fit on independent test MC "
        "beside the Cramer-Rao bound, and track everything in MLflow.",
        epilog=_RUN_EXAMPLES,
        formatter_class=fmt,
        allow_abbrev=False,
    )
    run.add_argument("--config", default="demo", metavar="NAME|FILE", help="shipped config name or a YAML file (default: demo)")
    run.add_argument("--out", type=Path, default=None, metavar="DIR", help="output directory (default: out/<config name>)")
    run.add_argument("--tracking-uri", default=None, metavar="URI",
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db)")
    run.add_argument("--workers", type=int, default=None, metavar="N",
                     help="generation actors (default: one per CPU; 0: no Ray)")
    run.add_argument("--address", default=None, metavar="ADDR", help="join this Ray cluster (default: $RAY_ADDRESS or a local one)")
    run.add_argument("--device", default=None, metavar="DEV", help="torch device for training (default: cuda if available, else cpu)")
    run.set_defaults(handler=_cmd_run)


_TUNE_EXAMPLES = """\
examples:
  # 16 Deep Sets trials on a laptop: Optuna + ASHA, 1 CPU each
  wcscan tune --model deepsets --dataset out/demo/events --num-samples 16 --epochs 12

  # the ResNet on ready-made images, one GPU per trial, trials on shared storage
  wcscan tune --model resnet3d --dataset /data/events --images /data/images \\
      --num-samples 64 --cpus-per-trial 4 --gpus-per-trial 1 --storage /data/tune \\
      --tracking-uri http://mlflow:5000

  # continue an interrupted sweep (same --out / --storage; the same MLflow parent run)
  wcscan tune --model deepsets --dataset out/demo/events --resume

  # trials share one copy of the events through Ray's object store
  wcscan tune --model deepsets --dataset out/demo/events --data object-store

Trials and checkpoints: STORAGE/<model> (default OUT/ray_results). MLflow: a
parent run for the sweep, a child run per trial (params, per-epoch losses);
the best trial (lowest val_loss) is evaluated on independent test MC beside
sigma_CRB: OUT/evaluation/tune-<model>/points.csv and a sigma/CRB figure.
Without --images the ResNet's bins are searched and images are built per trial.
"""


def _add_tune_parser(sub, common, fmt) -> None:
    tp = sub.add_parser(
        "tune",
        parents=[common],
        help="Ray Tune sweep over one model family's hyperparameters, tracked in MLflow",
        description="Search the hyperparameters of the 3D ResNet or Deep Sets with Ray Tune (ASHA, Optuna), "
        "log every trial to MLflow and evaluate the best against the Cramer-Rao bound.",
        epilog=_TUNE_EXAMPLES,
        formatter_class=fmt,
        allow_abbrev=False,
    )
    tp.add_argument("--model", required=True, choices=["resnet3d", "deepsets"], help="model family")
    tp.add_argument("--dataset", required=True, type=Path, metavar="DIR", help="event dataset (wcscan generate)")
    tp.add_argument("--images", type=Path, default=None, metavar="DIR", help="image dataset (wcscan images) for resnet3d")
    tp.add_argument("--num-samples", type=int, default=8, metavar="K", help="trials (default: 8)")
    tp.add_argument("--epochs", type=int, default=10, metavar="N", help="maximum epochs per trial (default: 10)")
    tp.add_argument("--cpus-per-trial", type=float, default=1, metavar="C", help="CPUs per trial (default: 1)")
    tp.add_argument("--gpus-per-trial", type=float, default=0, metavar="G", help="GPUs per trial (default: 0)")
    tp.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                    help="trials at once (default: the cluster's CPUs / --cpus-per-trial)")
    tp.add_argument("--search", choices=["optuna", "random"], default="optuna", help="search algorithm (default: optuna)")
    tp.add_argument("--scheduler", choices=["asha", "fifo"], default="asha", help="trial scheduler (default: asha)")
    tp.add_argument("--data", choices=["path", "object-store"], default="path",
                    help="trials read the events from the dataset path, or from one copy the driver puts in "
                         "Ray's object store (default: path)")
    tp.add_argument("--storage", default=None, metavar="PATH",
                    help="Tune storage: a shared directory or s3:// URI (default: OUT/ray_results)")
    tp.add_argument("--out", type=Path, default=None, metavar="DIR", help="output directory (default: out/tune-<model>)")
    tp.add_argument("--resume", action="store_true", help="continue the interrupted sweep at STORAGE/<model>")
    tp.add_argument("--tracking-uri", default=None, metavar="URI",
                    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db)")
    tp.add_argument("--address", default=None, metavar="ADDR", help="join this Ray cluster (default: $RAY_ADDRESS or a local one)")
    tp.add_argument("--set-size", type=int, default=2000, metavar="N", help="deepsets: events per training set (default: 2000)")
    tp.add_argument("--sets-per-point", type=int, default=150, metavar="N", help="deepsets: training sets per point (default: 150)")
    tp.add_argument("--events-per-image", type=int, default=2000, metavar="N",
                    help="resnet3d without --images: events per image (default: 2000)")
    tp.add_argument("--eval-sets", type=int, default=20, metavar="N", help="test sets per point for the best trial (default: 20)")
    tp.add_argument("--seed", type=int, default=0, help="seed of the search and of training (default: 0)")
    tp.add_argument("--tiny", action="store_true", help="tiny networks (a smoke test of the set-up)")
    tp.add_argument("--device", default=None, metavar="DEV", help="torch device (default: cuda if available, else cpu)")
    tp.set_defaults(handler=_cmd_tune)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    common.add_argument("-v", "--verbose", action="store_true", help="log progress messages")

    parser = _Parser(
        prog=PROG,
        description="Generate B0 -> K*0 mu mu events from flavio theory tables and fit delta C9.",
        epilog=_MAIN_EXAMPLES,
        formatter_class=fmt,
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    gen = sub.add_parser(
        "generate",
        parents=[common],
        help="sample events at scan points into a Parquet dataset",
        description="Sample B0 -> K*0 mu mu events at each delta C9 scan point and write a\n"
        "Hive-partitioned Parquet dataset with a manifest.",
        epilog=_GENERATE_EXAMPLES,
        formatter_class=fmt,
        allow_abbrev=False,
    )
    gen.add_argument(
        "--dc9",
        type=parse_dc9,
        required=True,
        metavar="SPEC",
        help="scan points: START:STOP:NUM (inclusive, NUM >= 1) or a comma list A,B,...",
    )
    gen.add_argument(
        "--q2-window",
        dest="q2_windows",
        type=parse_window,
        action="append",
        metavar="LO,HI",
        help="q2 window in GeV^2; repeat for several (default: 1.1,6.0)",
    )
    gen.add_argument("--events", type=int, required=True, metavar="N", help="events per scan point")
    gen.add_argument("--seed", type=int, default=0, metavar="S", help="master seed (default: 0)")
    gen.add_argument(
        "--chunk-size",
        type=int,
        default=1_000_000,
        metavar="N",
        help="events per Parquet part (default: 1000000)",
    )
    gen.add_argument(
        "--level", default="gen", choices=("gen", "det", "det_bkg"),
        help="event level: generator, detector, detector + background (default: gen)",
    )
    gen.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="Ray workers, one CPU each (default: one per CPU Ray reports; 0: in this process, no Ray)",
    )
    gen.add_argument(
        "--address", default=None, metavar="ADDR",
        help="join this Ray cluster (default: $RAY_ADDRESS, else start Ray locally)",
    )
    gen.add_argument("--out", type=Path, required=True, metavar="DIR",
                     help="dataset directory: new, empty, or a dataset of the same config to resume")
    gen.set_defaults(handler=_cmd_generate)

    fit = sub.add_parser(
        "fit",
        parents=[common],
        help="unbinned ML fit of delta C9 on sets of a dataset, beside sigma_CRB",
        description="Cut each scan point's events into disjoint sets, fit delta C9 on each set\n"
        "with an unbinned maximum-likelihood fit, and summarise per point beside the\n"
        "Cramer-Rao bound sigma_CRB.",
        epilog=_FIT_EXAMPLES,
        formatter_class=fmt,
        allow_abbrev=False,
    )
    fit_src = fit.add_argument_group("events (one of)")
    fit_src.add_argument("--dataset", type=Path, metavar="DIR", help="dataset directory from 'wcscan generate'")
    fit_src.add_argument(
        "--events-file", metavar="FILE",
        help="your own events: FILE.parquet, or FILE.root[:TREE] (needs pip install 'wcscan[root]')",
    )
    fit.add_argument("--events-per-set", type=int, required=True, metavar="N", help="events per set")
    fit.add_argument("--sets", type=int, required=True, metavar="M", help="sets per scan point")
    fit.add_argument(
        "--level", default=None, choices=("gen", "det", "det_bkg"),
        help="event level (default: the dataset's; gen for --events-file)",
    )
    fit.add_argument(
        "--column-map", type=parse_column_map, metavar="NAME=COL,...",
        help="with --events-file: wcscan column = the file's column, e.g. q2=Q2,cos_theta_mu=ctl",
    )
    fit_truth = fit.add_mutually_exclusive_group()
    fit_truth.add_argument(
        "--dc9-column", metavar="COL",
        help="with --events-file: the file's true-dC9 column; one point per value (default: a dc9 column if any)",
    )
    fit_truth.add_argument(
        "--dc9-true", type=lambda t: _finite(t, "--dc9-true"), metavar="VALUE",
        help="with --events-file: all rows are one point with this true dC9",
    )
    fit.add_argument(
        "--q2-window", dest="q2_windows", type=parse_window, action="append", metavar="LO,HI",
        help="with --events-file: q2 window of the events in GeV^2; repeat for several (default: 1.1,6.0)",
    )
    fit.add_argument("--out", type=Path, metavar="FILE.csv", help="write the per-point table as CSV, and its figure beside it (.png)")
    fit.set_defaults(handler=_cmd_fit)

    _add_images_parser(sub, common, fmt)
    _add_validate_parser(sub, common, fmt)
    _add_run_parser(sub, common, fmt)
    _add_tune_parser(sub, common, fmt)

    bench = sub.add_parser(
        "bench",
        parents=[common],
        help="time the generation, fit, images and scan kernels, or ResNet training",
        description="Time a kernel on a fixed workload and report the timings.",
        epilog=_BENCH_EXAMPLES,
        formatter_class=fmt,
        allow_abbrev=False,
    )
    bench.add_argument("what", choices=("generate", "fit", "scan", "images", "resnet"), help="which kernel to time")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rn = bench.add_argument_group("resnet (training throughput; defaults: the seed study's network)")
    rn.add_argument("--depth", type=int, default=34, choices=(10, 18, 34), help="ResNet depth (default: 34)")
    rn.add_argument("--width", type=int, default=64, metavar="W", help="filters of the first stage (default: 64)")
    rn.add_argument("--bins", type=int, default=50, metavar="B", help="voxels per axis (default: 50)")
    rn.add_argument("--batch", type=int, default=32, metavar="N", help="images per step (default: 32)")
    rn.add_argument("--steps", type=int, default=10, metavar="N", help="timed steps per repeat (default: 10)")
    rn.add_argument("--repeats", type=int, default=3, metavar="N", help="repeats; the median is reported (default: 3)")
    rn.add_argument("--no-amp", dest="amp", action="store_false", help="full precision (AMP applies on CUDA only)")
    rn.add_argument("--device", default=None, metavar="DEV", help="torch device (default: cuda if available, else cpu)")
    bench.set_defaults(handler=_cmd_bench)
    return parser


# --- output helpers -------------------------------------------------------------


def _consoles():
    from rich.console import Console

    return Console(), Console(stderr=True)


@contextmanager
def _progress(
    description: str, total: int, unit: str, enabled: bool
) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _progress_enabled(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --- commands -------------------------------------------------------------------


def _cmd_generate(args) -> int:
    from rich.table import Table

    from orchestrator.generate import generate

    windows = args.q2_windows or [DEFAULT_WINDOW]
    total = max(args.events, 0) * len(args.dc9)
    with _progress("generate", total, "events", _progress_enabled(args)) as advance:
        result = generate(
            args.out,
            args.dc9,
            args.events,
            args.seed,
            windows,
            chunk_size=args.chunk_size,
            progress=advance,
            level=args.level,
            workers=args.workers,
            address=args.address,
        )
    manifest = result.manifest
    out, _ = _consoles()
    if result.was_complete:
        out.print(f"{args.out} is complete ({total} events at {len(manifest['points'])} points); "
                  "nothing to do", soft_wrap=True)
        return 0
    table = Table()
    for col in ("point", "dc9", "events", "parts", "checksum"):
        table.add_column(col, justify="right" if col != "checksum" else "left")
    for p in manifest["points"]:
        table.add_row(
            f"{p['index']:03d}", f"{p['shifts']['dc9']:.4g}", str(p["events"]),
            str(len(p["parts"])), p["checksum"][:12],
        )
    out.print(table)
    kept = f" (kept {result.parts_kept} finished parts, made {result.parts_made})" if result.parts_kept else ""
    out.print(f"wrote {total} events at {len(manifest['points'])} points to {args.out}{kept}", soft_wrap=True)
    return 0


# The terminal shows the headline columns; the CSV (--out) has all of POINT_COLUMNS.
# (column, header, format): short headers so the table fits 80 columns.
_FIT_TABLE_COLUMNS = (
    ("dc9_true", "dC9", "{:+.3f}"),
    ("mean", "mean", "{:+.4f}"),
    ("bias", "bias", "{:+.4f}"),
    ("sigma", "sigma", "{:.4f}"),
    ("sigma_crb", "CRB", "{:.4f}"),
    ("sigma_over_crb", "sig/CRB", "{:.3f}"),
    ("pull_mean", "pull mu", "{:+.2f}"),
    ("pull_width", "pull sd", "{:.2f}"),
)


def _cmd_fit(args) -> int:
    from rich.table import Table

    from kernels.errors import ConfigError
    from orchestrator.fitting import POINT_COLUMNS, fit_dataset, write_points_csv

    if (args.dataset is None) == (args.events_file is None):
        raise ConfigError("give exactly one of --dataset, --events-file")
    if args.events_file is None:
        file_only = [o for o, v in (("--column-map", args.column_map), ("--dc9-column", args.dc9_column),
                                    ("--dc9-true", args.dc9_true), ("--q2-window", args.q2_windows)) if v is not None]
        if file_only:
            raise ConfigError(f"{', '.join(file_only)} only go with --events-file")
    total, points = None, None
    if args.events_file is not None:
        from orchestrator.fitting import fit_events_points, read_events_file

        points = read_events_file(args.events_file, args.column_map, args.q2_windows,
                                  dc9_column=args.dc9_column, dc9_true=args.dc9_true)
        total = args.sets * len(points) if args.events_per_set > 0 and args.sets > 0 else None
    elif args.events_per_set > 0 and args.sets > 0 and (args.dataset / "manifest.json").is_file():
        from kernels.event_store import read_manifest

        total = args.sets * len(read_manifest(args.dataset).get("points", ()))
    with _progress("fit", total or 0, "sets", _progress_enabled(args) and total) as advance:
        if points is not None:
            rows = fit_events_points(points, args.events_per_set, args.sets, args.q2_windows,
                                     level=args.level or "gen", progress=advance, source=args.events_file)
        else:
            rows = fit_dataset(args.dataset, args.events_per_set, args.sets, level=args.level, progress=advance)
    plot = None
    if args.out is not None:
        from orchestrator.plots import plot_fit_summary

        write_points_csv(rows, args.out)
        known = [r for r in rows if math.isfinite(r["dc9_true"])]  # the figure plots against the truth
        if known:
            plot = plot_fit_summary(
                known, args.out.with_suffix(".png"), title=f"ML fit, {args.sets} sets x {args.events_per_set} events"
            )
    out, _ = _consoles()
    from rich import box

    table = Table(title=f"ML fit: {args.sets} sets x {args.events_per_set} events per point", box=box.SIMPLE_HEAD, pad_edge=False)
    for _, header, _ in _FIT_TABLE_COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*(fmt.format(row[c]) for c, _, fmt in _FIT_TABLE_COLUMNS))
    out.print(table)
    if args.out is not None:
        figure = f", and the figure {plot}" if plot is not None else " (no figure: the truth is unknown)"
        out.print(f"wrote all {len(POINT_COLUMNS)} columns to {args.out}{figure}", soft_wrap=True)
    return 0


def _images_plan(args):
    """(source, points, images per point incl. test) of an images command; checks option combinations."""
    from kernels.errors import ConfigError

    sources = [name for name, on in (("--dataset", args.dataset is not None),
                                     ("--events-file", args.events_file is not None),
                                     ("--stream", args.stream)) if on]
    if len(sources) != 1:
        raise ConfigError(
            "give exactly one of --dataset, --events-file, --stream"
            + (f" (got {', '.join(sources)})" if sources else "")
        )
    stream_only = [o for o, v in (("--dc9", args.dc9), ("--q2-window", args.q2_windows), ("--events", args.events)) if v is not None]
    if not args.stream and stream_only:
        raise ConfigError(f"{', '.join(stream_only)} only go with --stream")
    if args.column_map and args.events_file is None:
        raise ConfigError("--column-map only goes with --events-file")
    if args.stream and args.events is not None:
        if args.events_per_image is None or args.events_per_image <= 0 or args.events <= 0:
            raise ConfigError(f"--events must be a positive integer, got {args.events}")
        k, rest = divmod(args.events, args.events_per_image)
        if rest or (args.images_per_point is not None and args.images_per_point != k):
            raise ConfigError(
                f"--events {args.events} must be --images-per-point x --events-per-image "
                f"({args.images_per_point or 'K'} x {args.events_per_image})"
            )
        args.images_per_point = k
    if args.images_per_point is None:
        raise ConfigError("--images-per-point is required" + (" (or --events with --stream)" if args.stream else ""))
    return sources[0]


def _cmd_images(args) -> int:
    from rich.table import Table

    from kernels.event_store import events_file, load_events, read_manifest
    from orchestrator.images import build_images, split_counts

    source = _images_plan(args)
    dataset, info = args.dataset, None
    if source == "--events-file":
        import hashlib

        dataset = load_events(args.events_file, args.column_map)
        info = {"path": str(args.events_file.resolve()),
                "sha256": hashlib.sha256(events_file(args.events_file).read_bytes()).hexdigest(),
                "column_map": args.column_map or {}}
    total = 0
    if args.images_per_point > 0 and 0 <= args.val_fraction < 1:
        n_train, n_val = split_counts(args.images_per_point, args.val_fraction)
        n_test = 0 if source == "--events-file" else (n_val if args.test_images is None else max(args.test_images, 0))
        if source == "--stream":
            points = len(args.dc9 or ())
        elif source == "--dataset":
            points = len(read_manifest(args.dataset).get("points", ()))
        else:
            points = len(set(dataset.column("dc9").to_pylist())) if "dc9" in dataset.column_names else 1
        total = points * (args.images_per_point + n_test)
    with _progress("images", total, "images", _progress_enabled(args) and total > 0) as advance:
        manifest = build_images(
            dataset,
            args.out,
            args.bins,
            args.events_per_image,
            args.images_per_point,
            args.val_fraction,
            progress=advance,
            test_images=args.test_images,
            seed=args.seed,
            level=args.level,
            fill=args.fill,
            stream=args.stream,
            workers=args.workers,
            address=args.address,
            dc9=args.dc9,
            windows=args.q2_windows,
            source=info,
        )
    out, _ = _consoles()
    table = Table(title=f"{manifest['bins']}^3 voxels, {manifest['events_per_image']} events per image")
    for col in ("point", "dc9", "train", "val", "test"):
        table.add_column(col, justify="right")
    n_images = 0
    for p in manifest["points"]:
        counts = [p["splits"][s]["images"] for s in ("train", "val", "test")]
        n_images += sum(counts)
        dc9 = p["shifts"].get("dc9")
        table.add_row(f"{p['index']:03d}", "-" if dc9 is None else f"{dc9:.4g}", *map(str, counts))
    out.print(table)
    size = n_images * 4 * 2 * manifest["bins"] ** 3
    out.print(f"wrote {n_images} images ({size / 2**30:.3g} GiB) to {args.out}", soft_wrap=True)
    return 0


def _cmd_validate(args) -> int:
    from rich import box
    from rich.table import Table

    from kernels.errors import ConfigError
    from orchestrator.validate import validate_fit, validate_generator

    for name in ("events", "events_per_set"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.fit_sets < 0 or args.fit_sets == 1:
        raise ConfigError(f"--fit-sets must be 0 (skip) or at least 2, got {args.fit_sets}")
    out, _ = _consoles()
    with _progress("validate", len(args.dc9), "points", _progress_enabled(args)) as advance:
        rows = validate_generator(args.dc9, args.events, args.seed, progress=advance)
    table = Table(title=f"generator vs flavio, {args.events} events per point, q2 in [1.1, 6.0]", box=box.SIMPLE_HEAD)
    for h in ("dC9", "observable", "flavio", "tables", "events", "stat err", "pull"):
        table.add_column(h, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(f"{r['dc9']:+.2f}", r["observable"], f"{r['flavio']:+.5f}", f"{r['tables']:+.5f}",
                      f"{r['events']:+.5f}", f"{r['error']:.5f}", f"{r['pull']:+.2f}")
    out.print(table)
    if args.fit_sets:
        with _progress("fit", args.fit_sets, "sets", _progress_enabled(args)) as advance:
            row = validate_fit(args.dc9[0], args.events_per_set, args.fit_sets, args.seed, progress=advance)
        out.print(
            f"ML fit at dC9 = {row['dc9_true']:+g}: {row['n_sets']} sets x {row['n_events']} events: "
            f"bias {row['bias']:+.4f}, sigma {row['sigma']:.4f}, sigma_CRB {row['sigma_crb']:.4f}, "
            f"sigma/sigma_CRB {row['sigma_over_crb']:.3f}, pulls {row['pull_mean']:+.2f} +- {row['pull_width']:.2f}",
            soft_wrap=True,
        )
    return 0


def _cmd_run(args) -> int:
    from rich import box
    from rich.table import Table

    from kernels.errors import ConfigError
    from orchestrator.config import load_config
    from orchestrator.pipeline import run_job
    from orchestrator.report import TERMINAL_COLUMNS, summary_header, summary_rows

    cfg = load_config(args.config)
    if args.device:
        cfg = cfg.model_copy(update={"device": args.device})
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    out_dir = args.out or Path("out") / cfg.name
    _, err = _consoles()
    enabled = _progress_enabled(args)

    def progress(description, total, unit):
        return _progress(description, total, unit, enabled and total > 0)

    def stage(msg):
        if not args.quiet:
            err.print(f"[bold]wcscan run[/bold] {msg}", highlight=False)

    result = run_job(cfg, out_dir, tracking_uri=args.tracking_uri, workers=args.workers, address=args.address,
                     progress=progress, stage=stage)
    out, _ = _consoles()
    ev0 = result.evaluations[0].rows[0]
    table = Table(title=f"{cfg.name}: {ev0['n_sets']} test sets x {ev0['n_events']} events per point; "
                  "sigma/sigma_CRB = 1 is optimal", box=box.SIMPLE_HEAD, pad_edge=False)
    for h in ["estimator"] + summary_header(TERMINAL_COLUMNS):
        table.add_column(h, justify="right", no_wrap=True)
    for row in summary_rows(result.evaluations, TERMINAL_COLUMNS):
        table.add_row(*row)
    out.print(table)
    out.print(f"report: {result.report}", soft_wrap=True)
    out.print(f"MLflow: {result.tracking_uri} (parent run {result.run_id})", soft_wrap=True)
    return 0


def _cmd_tune(args) -> int:
    from kernels.errors import ConfigError
    from orchestrator.sweep import run_tune

    for name in ("num_samples", "epochs", "set_size", "sets_per_point", "events_per_image", "eval_sets"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.images is not None and args.model != "resnet3d":
        raise ConfigError("--images is for --model resnet3d")
    out_dir = args.out or Path("out") / f"tune-{args.model}"
    _, err = _consoles()
    if not args.quiet:
        err.print(f"[bold]wcscan tune[/bold] {args.model}: {args.num_samples} trials, {args.search} search, "
                  f"{args.scheduler} scheduler", highlight=False)
    res = run_tune(
        args.model, args.dataset, out_dir, num_samples=args.num_samples, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, search=args.search, scheduler=args.scheduler, storage=args.storage,
        resume=args.resume, max_concurrent=args.max_concurrent, images=args.images, data=args.data,
        epochs=args.epochs, tiny=args.tiny, seed=args.seed, tracking_uri=args.tracking_uri, eval_sets=args.eval_sets,
        address=args.address, verbose=0 if args.quiet else 1,
        spec_overrides={"set_size": args.set_size, "sets_per_point": args.sets_per_point,
                        "events_per_image": args.events_per_image, "device": args.device},
    )
    out, _ = _consoles()
    out.print(f"{len(res.trials)} trials ({res.errors} failed) in {res.experiment_path}", soft_wrap=True)
    if res.best is not None:
        cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in res.best["config"].items())
        out.print(f"best trial {res.best['trial_id']}: val_loss {res.best['best_val_loss']:.4g} ({cfg})", soft_wrap=True)
    if res.evaluation is not None:
        out.print("best on test MC: " + ", ".join(f"{k} {_fmt(v)}" for k, v in res.evaluation.summary.items()),
                  soft_wrap=True)
    out.print(f"MLflow: {res.tracking_uri} (parent run {res.run_id})", soft_wrap=True)
    return 0


def _cmd_bench(args) -> int:
    from orchestrator import bench

    if args.what == "images":
        from orchestrator.bench_images import bench_images

        result = bench_images()
    elif args.what == "scan":
        from orchestrator.bench_scan import bench_scan

        result = bench_scan()
    elif args.what == "resnet":
        from kernels.errors import ConfigError

        for name in ("width", "bins", "batch", "steps", "repeats"):
            if getattr(args, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
        result = bench.bench_resnet(args.depth, args.bins, args.batch, args.steps, args.repeats, args.amp,
                                    args.device, args.width)
    else:
        result = bench.bench_generate() if args.what == "generate" else bench.bench_fit()
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
        return 0
    from rich.table import Table

    out, _ = _consoles()
    table = Table(title=f"bench {args.what}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(str(key), _fmt(value))
    out.print(table)
    return 0


# --- entry point ----------------------------------------------------------------


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    root = logging.getLogger()
    if root.handlers:  # configured by the embedding program (or pytest)
        return
    from rich.console import Console

    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler],
                        format="%(message)s")


def _error(message: str) -> int:
    line = " ".join(str(message).split("\n")).strip()
    sys.stderr.write(f"{PROG}: error: {line}\n")
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(_join_option_values(argv))
    except UsageError as err:
        return _error(err)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    _setup_logging(args.verbose)
    try:
        return args.handler(args)
    except WcscanError as err:
        return _error(err)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
