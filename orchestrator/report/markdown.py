"""``OUT/report.md``: the job's answer, how close to optimal each estimator is, with its figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from kernels.files import atomic_write_text

SUMMARY_COLUMNS = (
    ("sigma_over_crb_mean", "σ/CRB mean", "{:.3f}"),
    ("sigma_over_crb_max", "σ/CRB max", "{:.3f}"),
    ("abs_bias_over_crb_max", "|bias|/CRB max", "{:.2f}"),
    ("mse_mean", "MSE", "{:.3g}"),
    ("linearity_slope", "slope", "{:.3f}"),
    ("linearity_intercept", "offset", "{:+.3f}"),
    ("pull_width_mean", "pull sd", "{:.2f}"),
)


def _fmt(fmt: str, value) -> str:
    return "—" if value is None else fmt.format(value)


TERMINAL_COLUMNS = ("sigma_over_crb_mean", "sigma_over_crb_max", "abs_bias_over_crb_max", "mse_mean", "linearity_slope")
"""The terminal's narrower summary: sigma/sigma_CRB, bias, MSE and linearity."""


def summary_rows(evaluations, columns=None) -> list[list[str]]:
    cols = [c for c in SUMMARY_COLUMNS if columns is None or c[0] in columns]
    return [[ev.name] + [_fmt(f, ev.summary.get(k)) for k, _, f in cols] for ev in evaluations]


def summary_header(columns=None) -> list[str]:
    return [h for k, h, _ in SUMMARY_COLUMNS if columns is None or k in columns]


def _cell(text) -> str:
    """A GFM table cell: a literal ``|`` (as in ``|bias|``) is escaped, or it would split the cell."""
    return str(text).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table.

    >>> print(markdown_table(["a", "|b|"], [["1", "2"]]))
    | a | \\|b\\| |
    |---|---|
    | 1 | 2 |
    """
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def write_report(out: Path, cfg, evaluations, figures: Mapping[str, Path], checksum: str, tracking_uri: str, run_id: str) -> Path:
    """Write ``out/report.md`` atomically and return its path."""
    out = Path(out)
    ev0 = evaluations[0]
    n_sets, n_events = ev0.rows[0]["n_sets"], ev0.rows[0]["n_events"]
    parts = [
        f"# wcscan report: {cfg.name}",
        "",
        f"Level `{cfg.scan.level}`, q2 windows {cfg.theory.windows}, training grid of {len(cfg.scan.dc9)} δC9 values "
        f"in [{min(cfg.scan.dc9):g}, {max(cfg.scan.dc9):g}]. Every estimator is evaluated on the same "
        f"{n_sets} sets of {n_events} events per point, drawn from independent test MC. σ_CRB is the "
        "Cramér–Rao bound: σ/σ_CRB = 1 is optimal.",
        "",
        "## Summary",
        "",
        markdown_table(["estimator"] + summary_header(), summary_rows(evaluations)),
        "",
        "## σ/σ_CRB per point",
        "",
    ]
    points = sorted({r["dc9_true"] for ev in evaluations for r in ev.rows})
    by = {ev.name: {r["dc9_true"]: r for r in ev.rows} for ev in evaluations}
    rows = []
    for d in points:
        on = any(by[ev.name][d].get("on_grid") for ev in evaluations if d in by[ev.name])
        cells = [f"{by[ev.name][d]['sigma_over_crb']:.3f} ({by[ev.name][d]['bias']:+.3f})" if d in by[ev.name] else "—" for ev in evaluations]
        rows.append([f"{d:+.3f}", "yes" if on else "no", f"{by[ev0.name][d]['sigma_crb']:.4f}"] + cells)
    parts += [
        "Each cell: σ/σ_CRB (bias).",
        "",
        markdown_table(["δC9", "on grid", "σ_CRB"] + [ev.name for ev in evaluations], rows),
        "",
        "## Figures",
        "",
    ]
    for name, path in figures.items():
        parts += [f"![{name}]({Path(path).relative_to(out).as_posix()})", ""]
    parts += [
        "## Where everything is",
        "",
        "- per-point tables: `evaluation/<estimator>/points.csv`",
        f"- events: `events/` (manifest sha256 `{checksum[:16]}…`)",
        f"- MLflow: `{tracking_uri}`, parent run `{run_id}`; open it with",
        "",
        "```bash",
        f"mlflow ui --backend-store-uri {tracking_uri}" if tracking_uri.startswith("sqlite") else f"# open {tracking_uri}",
        "```",
        "",
    ]
    path = out / "report.md"
    return atomic_write_text(path, "\n".join(parts))
