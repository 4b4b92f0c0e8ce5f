"""``OUT/report.md`` of a run over several coefficients: each estimator against the marginal bounds, per N."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kernels.files import atomic_write_text
from orchestrator.report.markdown import markdown_table

__all__ = ["joint_summary_table", "write_joint_report"]


def joint_summary_table(evaluations, shifts: Sequence[str], n: int) -> tuple[list[str], list[list[str]]]:
    """Header and rows at set size ``n``: per estimator and coefficient, sigma / sigma_CRB mean (max), the largest
    |bias| / sigma_CRB, the largest correlation gap and the joint coverage (mean, range)."""
    eff = f"sigma_over_crb_eff_mean_{shifts[0]}_N{n}" in evaluations[0].summary
    image = any(f"sigma_over_crb_image_mean_{shifts[0]}_N{n}" in ev.summary for ev in evaluations)
    header = ["estimator", "coefficient", "σ/σ_CRB mean (max)", *(["σ/σ_CRB,image mean (max)"] if image else []),
              "max |bias|/σ_CRB",
              *(["σ/σ_CRB,eff mean (max)", "max |bias|/σ_CRB,eff"] if eff else []), "max |corr − corr_CRB|",
              *(["max |corr − corr_CRB,eff|"] if eff else []),
              "joint coverage 68% (range)", "joint coverage 95% (range)"]
    rows = []
    for ev in evaluations:
        s = ev.summary
        for i, c in enumerate(shifts):
            first = i == 0
            rows.append([
                ev.name if first else "", c,
                f"{s[f'sigma_over_crb_mean_{c}_N{n}']:.3f} ({s[f'sigma_over_crb_max_{c}_N{n}']:.3f})",
                *([_image_cell(s, c, n)] if image else []),
                f"{s[f'abs_bias_over_crb_max_{c}_N{n}']:.2f}",
                *([f"{s[f'sigma_over_crb_eff_mean_{c}_N{n}']:.3f} ({s[f'sigma_over_crb_eff_max_{c}_N{n}']:.3f})",
                   f"{s[f'abs_bias_over_crb_eff_max_{c}_N{n}']:.2f}"] if eff else []),
                f"{s[f'corr_gap_max_N{n}']:.3f}" if first else "",
                *([f"{s[f'corr_gap_eff_max_N{n}']:.3f}" if first else ""] if eff else []),
                (f"{s[f'joint_coverage_68_mean_N{n}']:.3f} ({s[f'joint_coverage_68_min_N{n}']:.2f}–"
                 f"{s[f'joint_coverage_68_max_N{n}']:.2f})") if first else "",
                (f"{s[f'joint_coverage_95_mean_N{n}']:.3f} ({s[f'joint_coverage_95_min_N{n}']:.2f}–"
                 f"{s[f'joint_coverage_95_max_N{n}']:.2f})") if first else "",
            ])
    return header, rows


def _image_cell(summary: dict, c: str, n: int) -> str:
    """A ResNet's sigma over its images' own bound (:mod:`kernels.image_information`), "—" for the others."""
    key = f"sigma_over_crb_image_mean_{c}_N{n}"
    if key not in summary:
        return "—"
    return f"{summary[key]:.3f} ({summary[f'sigma_over_crb_image_max_{c}_N{n}']:.3f})"


def _point_table(evaluations, shifts, n: int) -> str:
    header = ["point", *(f"σ_CRB {c}" for c in shifts), "corr_CRB"]
    for ev in evaluations:
        header += [f"{ev.name} σ/σ_CRB", f"{ev.name} joint 68/95"]
    a, b = shifts[0], shifts[1]
    first = [r for r in evaluations[0].rows if r["n_events"] == n]
    rows = []
    for k, r0 in enumerate(first):
        row = [",".join(f"{r0[f'{c}_true']:g}" for c in shifts), *(f"{r0[f'sigma_crb_{c}']:.4f}" for c in shifts),
               f"{r0[f'corr_crb_{a}_{b}']:+.2f}"]
        for ev in evaluations:
            r = [x for x in ev.rows if x["n_events"] == n][k]
            row += [" / ".join(f"{r[f'sigma_over_crb_{c}']:.3f}" for c in shifts),
                    f"{r['joint_coverage_68']:.2f} / {r['joint_coverage_95']:.2f}"]
        rows.append(row)
    return markdown_table(header, rows)


def write_joint_report(out: Path, cfg, evaluations, figures: Sequence[Path], checksum: str, tracking_uri: str,
                       run_id: str) -> Path:
    """Write ``out/report.md`` from the evaluations' rows and summaries (nothing recomputed); return its path."""
    shifts = list(cfg.shift_columns)
    ec = cfg.evaluation
    lines = [f"# {cfg.name}: {', '.join(shifts)} at once", "",
             f"Test sets: {ec.sets} per point of the evaluation design ({len(evaluations[0].rows) // len(ec.events_per_set)} "
             f"points), independent Monte Carlo, at N = {', '.join(f'{n:,}' for n in ec.events_per_set)} events. "
             "σ_CRB of a coefficient is its marginal bound, the other coefficients free (√ of the diagonal of the "
             "inverse Fisher matrix over N); the joint coverage is that of each set's own 68% / 95% ellipse "
             "(its covariance, the χ² quantile with "
             f"{len(shifts)} degrees of freedom). 1.00 × σ_CRB is optimal.", ""]
    if cfg.nuisances.form_factors != "none":
        lines += [f"Every test set was drawn in its own world from flavio's prior on the 19 BSZ form factors (widths × "
                  f"{cfg.nuisances.prior_scale:g}): σ_CRB,eff is each coefficient's bound with them profiled, the bound "
                  "real data allow; `ml_fit_profiled` fits them with the coefficients, the other estimators assume "
                  "the central form factors (what a naive analysis would do).", ""]
    for n in ec.events_per_set:
        header, rows = joint_summary_table(evaluations, shifts, n)
        lines += [f"## N = {n:,}", "", markdown_table(header, rows), ""]
        if len(shifts) == 2:
            lines += ["Per point (σ/σ_CRB of each coefficient; joint coverage):", "",
                      _point_table(evaluations, shifts, n), ""]
    lines += ["## Figures", ""]
    lines += [f"![{Path(f).stem}](figures/{Path(f).name})" for f in figures]
    lines += ["", "## Where everything is", "",
              f"- per-point tables: `evaluation/<estimator>/points.csv` ({', '.join(ev.name for ev in evaluations)})",
              f"- the scan's events: `events/` (manifest sha256 {checksum[:16]}…)",
              f"- MLflow: {tracking_uri}, parent run {run_id}", ""]
    path = Path(out) / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
