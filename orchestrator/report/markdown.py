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
    ("coverage_68", "coverage 68%", "{:.3f}"),
    ("coverage_95", "coverage 95%", "{:.3f}"),
    ("sigma_over_crb_image_mean", "σ/σ_CRB,image mean", "{:.3f}"),
)


def _fmt(fmt: str, value) -> str:
    return "—" if value is None else fmt.format(value)


TERMINAL_COLUMNS = ("sigma_over_crb_mean", "sigma_over_crb_max", "abs_bias_over_crb_max", "mse_mean", "linearity_slope")
"""The terminal's narrower summary: sigma/sigma_CRB, bias, MSE and linearity."""


NUISANCE_SUMMARY = (
    ("sigma_over_crb_eff_mean", "σ/CRB,eff mean", "{:.3f}"),
    ("abs_bias_over_crb_eff_max", "|bias|/CRB,eff max", "{:.2f}"),
)
"""Against the efficient bound: shown (in the terminal too) when the test sets come from prior-drawn worlds."""


def _columns(columns, evaluations):
    cols = [c for c in SUMMARY_COLUMNS if columns is None or c[0] in columns]
    if any(NUISANCE_SUMMARY[0][0] in ev.summary for ev in evaluations):
        cols += list(NUISANCE_SUMMARY)
    return cols


def summary_rows(evaluations, columns=None) -> list[list[str]]:
    cols = _columns(columns, evaluations)
    return [[ev.name] + [_fmt(f, ev.summary.get(k)) for k, _, f in cols] for ev in evaluations]


def summary_header(columns=None, evaluations=()) -> list[str]:
    return [h for k, h, _ in _columns(columns, evaluations)]


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


def _finite(value) -> bool:
    return value is not None and value == value


def calibration_section(evaluations) -> list[str]:
    """The report's lines on the honesty of the per-set widths: a verdict per estimator and the coverage per point."""
    parts = [
        "## Calibration",
        "",
        "Per-set widths s, checked on the same independent test sets: the intervals x ± z·s at 68% and 95% "
        "should cover the truth in 68% and 95% of the sets (binomial error √(c(1−c)/M) per point), and the "
        "PIT values Φ((d − x)/s), pooled over the points, should be uniform (KS and χ² tests at α = 0.01).",
        "",
    ]
    for ev in evaluations:
        c = ev.calibration
        if c is None:
            parts.append(f"- `{ev.name}`: no per-set width, so no coverage.")
            continue
        tests = (f"; PIT KS p = {c['ks_pvalue']:.3g}, χ² p = {c['chi2_pvalue']:.3g}" if "ks_pvalue" in c
                 else " (too few sets to test uniformity)")
        parts.append(f"- `{ev.name}`: **{c['verdict']}**: pooled over {c['n_sets']} sets, coverage "
                     f"{c['coverage_68']:.3f} (68%) and {c['coverage_95']:.3f} (95%){tests}.")
    with_widths = [ev for ev in evaluations if ev.calibration is not None]
    if with_widths:
        by = {ev.name: {r["dc9_true"]: r for r in ev.rows} for ev in with_widths}
        points = sorted({d for rows in by.values() for d in rows})
        cell = lambda r: (f"{r['coverage_68']:.3f} / {r['coverage_95']:.3f}"  # noqa: E731
                          if r is not None and _finite(r["coverage_68"]) else "—")
        rows = [[f"{d:+.3f}"] + [cell(by[ev.name].get(d)) for ev in with_widths] for d in points]
        parts += ["", "Coverage per point, 68% / 95%:", "",
                  markdown_table(["δC9"] + [ev.name for ev in with_widths], rows)]
    return parts + [""]


def luminosity_section(rows, evaluations) -> list[str]:
    """The bounds against N (:func:`orchestrator.evaluate.bounds.luminosity_bounds`), with the estimators' σ at
    δC9 = 0 where this run measured them (at its one set size)."""
    pc = any(_finite(r.get("sigma_crb_eff_pc")) for r in rows)
    header = ["N", "σ_CRB, fixed", "σ_CRB,eff, form factors profiled", "ratio"]
    header += ["σ_CRB,eff, and power corrections", "ratio"] if pc else []
    table = []
    for r in rows:
        cells = [f"{r['n_events']:,}", f"{r['sigma_crb']:.4f}", f"{r['sigma_crb_eff']:.4f}", f"{r['eff_over_fixed']:.2f}"]
        table.append(cells + ([f"{r['sigma_crb_eff_pc']:.4f}", f"{r['pc_over_fixed']:.2f}"] if pc else []))
    r0 = rows[0]
    parts = ["## The bound against luminosity", "",
             f"At δC9 = {r0['dc9']:g}, level `{r0['level']}`, windows {r0['windows']}, prior × {r0['prior_scale']:g} "
             "(`evaluation/bounds.csv`; `wcscan bounds` adds the high-q² window). N counts the events of a set.", "",
             markdown_table(header, table), ""]
    at_zero = [(ev.name, r) for ev in evaluations for r in ev.rows if r["dc9_true"] == 0.0]
    if at_zero:
        ref = "sigma_crb_eff_pc" if pc else "sigma_crb_eff"
        bound = {r["n_events"]: r[ref] for r in rows}
        lines = [f"- `{name}` at N = {r['n_events']:,}: σ = {r['sigma']:.4f}"
                 + (f", {r['sigma'] / bound[r['n_events']]:.3f} × the profiled bound" if r["n_events"] in bound else "")
                 for name, r in at_zero]
        parts += ["The estimators, measured at δC9 = 0 at this run's set size only:", "", *lines, ""]
    return parts


def write_report(out: Path, cfg, evaluations, figures: Mapping[str, Path], checksum: str, tracking_uri: str, run_id: str,
                 luminosity=None) -> Path:
    """Write ``out/report.md`` atomically and return its path. ``luminosity``: the rows of
    :func:`orchestrator.evaluate.bounds.luminosity_bounds` for its section (None: no section)."""
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
        markdown_table(["estimator"] + summary_header(None, evaluations), summary_rows(evaluations)),
        "",
        "## σ/σ_CRB per point",
        "",
    ]
    points = sorted({r["dc9_true"] for ev in evaluations for r in ev.rows})
    by = {ev.name: {r["dc9_true"]: r for r in ev.rows} for ev in evaluations}
    # sigma_CRB,image of the image estimators (the ResNet), beside sigma_CRB
    images = [ev for ev in evaluations if any(_finite(r.get("sigma_crb_image")) for r in ev.rows)]
    rows = []
    for d in points:
        on = any(by[ev.name][d].get("on_grid") for ev in evaluations if d in by[ev.name])
        cells = [f"{by[ev.name][d]['sigma_over_crb']:.3f} ({by[ev.name][d]['bias']:+.3f})" if d in by[ev.name] else "—" for ev in evaluations]
        bounds = [f"{by[ev.name][d]['sigma_crb_image']:.4f}" if d in by[ev.name] else "—" for ev in images]
        rows.append([f"{d:+.3f}", "yes" if on else "no", f"{by[ev0.name][d]['sigma_crb']:.4f}"] + bounds + cells)
    parts += [
        "Each cell: σ/σ_CRB (bias)."
        + (" σ_CRB,image: the bound of the voxel image (counts and mean q²) that the image estimator sees."
           if images else ""),
        "",
        markdown_table(["δC9", "on grid", "σ_CRB"] + [f"σ_CRB,image ({ev.name})" for ev in images]
                       + [ev.name for ev in evaluations], rows),
        "",
        *calibration_section(evaluations),
        *(luminosity_section(luminosity, evaluations) if luminosity else []),
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
