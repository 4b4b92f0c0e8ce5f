"""Figures: what people would rather look at than read.

Plain matplotlib (Agg backend), one function per figure, each writing a PNG
atomically and returning its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from kernels.files import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return Path(path)


def _finish(plt, fig, path: Path, title: str = "") -> Path:
    """The figure's title, a tight layout, the PNG written atomically; the figure closed. Returns the path."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_fit_summary(rows: Sequence[Mapping], path: Path, title: str = "") -> Path:
    """Linearity (mean +- sigma against the truth, with y = x) and sensitivity against sigma_CRB."""
    plt = _pyplot()
    d = np.array([r["dc9_true"] for r in rows], dtype=float)
    mean = np.array([r["mean"] for r in rows], dtype=float)
    sigma = np.array([r["sigma"] for r in rows], dtype=float)
    crb = np.array([r["sigma_crb"] for r in rows], dtype=float)
    n_sets = int(rows[0]["n_sets"]) if rows else 0
    order = np.argsort(d)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    lim = [d.min() - 0.3, d.max() + 0.3] if d.size else [-1, 1]
    ax1.plot(lim, lim, color="0.6", lw=1, label="y = x")
    ax1.errorbar(d, mean, yerr=sigma, fmt="o", ms=4, capsize=3, label="ML fit: mean ± σ")
    ax1.set_xlabel("true δC9")
    ax1.set_ylabel("estimated δC9")
    ax1.set_title("linearity")
    ax1.legend(loc="upper left")
    # The standard error of a standard deviation from M sets is sigma / sqrt(2 (M - 1)).
    err = sigma / np.sqrt(max(2 * (n_sets - 1), 1))
    ax2.plot(d[order], crb[order], "-", color="k", lw=1.5, label="σ_CRB (Cramér–Rao)")
    ax2.errorbar(d, sigma, yerr=err, fmt="o", ms=4, capsize=3, label="ML fit: σ over sets")
    ax2.set_xlabel("true δC9")
    ax2.set_ylabel("σ(δC9)")
    ax2.set_title("sensitivity")
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="best")
    return _finish(plt, fig, path, title)


def _ellipse(ax, centre, sx, sy, rho, level: float = 0.68, **kw):
    """The ``level`` region of a 2D Gaussian (widths sx, sy, correlation rho) around ``centre``."""
    if not all(np.isfinite([sx, sy, rho, *centre])):
        return
    cov = np.array([[sx * sx, rho * sx * sy], [rho * sx * sy, sy * sy]])
    w, v = np.linalg.eigh(cov)
    r = np.sqrt(-2.0 * np.log(1.0 - level))  # the chi-square quantile for 2 degrees of freedom, sqrt
    t = np.linspace(0, 2 * np.pi, 121)
    xy = (v @ (np.sqrt(np.clip(w, 0, None))[:, None] * np.stack([np.cos(t), np.sin(t)]))) * r
    ax.plot(centre[0] + xy[0], centre[1] + xy[1], **kw)


def _label(shift: str) -> str:
    """``dc10p`` -> ``δC10′``."""
    return f"δ{shift[1:].upper().replace('P', chr(8242))}"


def _gaussian(ax, centre: float, sigma: float, **kw) -> None:
    """The density of N(centre, sigma^2) over centre +- 3.5 sigma (nothing when either is not finite)."""
    if not (np.isfinite(centre) and np.isfinite(sigma) and sigma > 0):
        return
    x = centre + sigma * np.linspace(-3.5, 3.5, 141)
    ax.plot(x, np.exp(-0.5 * ((x - centre) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi)), **kw)


def plot_joint_fit(rows: Sequence[Mapping], shifts: Sequence[str], path: Path, title: str = "") -> Path:
    """A corner plot of a joint fit of several coefficients. Below the diagonal, one panel per pair: at each
    point the truth, the bound's 68% region around it (sigma_CRB and its correlation; around the mean
    estimate when the truth is unknown), and the estimates' mean with their own 68% region (the spread and
    correlation over sets). On the diagonal, each coefficient's marginal at every point: the bound's
    Gaussian N(truth, sigma_CRB^2) beside the estimates' N(mean, sigma^2). Drawn from the rows alone
    (``points.csv``)."""
    plt = _pyplot()
    shifts = list(shifts)
    n = len(shifts)
    fig, axes = plt.subplots(n, n, figsize=(3.9 * n + 0.6, 3.6 * n), squeeze=False)
    for ax in axes.ravel():
        ax.set_visible(False)

    def centre(r, a):
        t, m = float(r[f"{a}_true"]), float(r[f"mean_{a}"])
        return (t if np.isfinite(t) else m), m

    for i, a in enumerate(shifts):  # the diagonal: the marginal densities
        ax = axes[i, i]
        ax.set_visible(True)
        for k, r in enumerate(rows):
            at, m = centre(r, a)
            _gaussian(ax, at, float(r[f"sigma_crb_{a}"]), color="k", lw=1.0)
            _gaussian(ax, m, float(r[f"sigma_{a}"]), color="C0", lw=1.0, ls="--")
        ax.set_yticks([])
        ax.set_xlabel(_label(a))
        ax.set_title(f"{_label(a)}: marginal", fontsize=9)
        ax.grid(alpha=0.3)
    for j in range(n):  # below the diagonal: each pair's 68% regions
        for i in range(j):
            a, b = shifts[i], shifts[j]
            ax = axes[j, i]
            ax.set_visible(True)
            for k, r in enumerate(rows):
                t = (float(r[f"{a}_true"]), float(r[f"{b}_true"]))
                m = (float(r[f"mean_{a}"]), float(r[f"mean_{b}"]))
                first = k == 0
                ax.plot(*t, "k+", ms=8, label="truth" if first else None)
                at = t if np.isfinite(t).all() else m  # the truth unknown: the bound at the mean estimate
                _ellipse(ax, at, float(r[f"sigma_crb_{a}"]), float(r[f"sigma_crb_{b}"]), float(r[f"corr_crb_{a}_{b}"]),
                         color="k", lw=1.2, label="σ_CRB, 68%" if first else None)
                ax.plot(*m, "o", color="C0", ms=3, label="mean estimate" if first else None)
                _ellipse(ax, m, float(r[f"sigma_{a}"]), float(r[f"sigma_{b}"]), float(r[f"corr_{a}_{b}"]),
                         color="C0", lw=1.2, ls="--", label="estimates, 68%" if first else None)
            ax.set_xlabel(_label(a))
            ax.set_ylabel(_label(b))
            ax.grid(alpha=0.3)
    for i in range(n - 1):  # a diagonal panel shares its column's axis
        axes[i, i].set_xlim(axes[n - 1, i].get_xlim())
    if n > 1:  # the legend in the empty corner above the diagonal
        handles, labels = axes[1, 0].get_legend_handles_labels()
        legend = axes[0, n - 1]
        legend.set_visible(True)
        legend.axis("off")
        legend.legend(handles, labels, loc="center", fontsize=9, frameon=False,
                      title="diagonal: bound's (solid) and\nestimates' (dashed) Gaussians", title_fontsize=8)
    return _finish(plt, fig, path, title)


def _series(evaluation, key):
    rows = sorted(evaluation.rows, key=lambda r: r["dc9_true"])
    return np.array([r["dc9_true"] for r in rows]), np.array([r[key] for r in rows], dtype=float), rows


def plot_linearity(evaluations, path: Path) -> Path:
    """mean +- sigma against the truth for every estimator, with y = x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    allx = np.concatenate([_series(e, "mean")[0] for e in evaluations])
    lim = [allx.min() - 0.3, allx.max() + 0.3]
    ax.plot(lim, lim, color="0.6", lw=1, label="y = x")
    for i, e in enumerate(evaluations):
        x, mean, _ = _series(e, "mean")
        _, sig, _ = _series(e, "sigma")
        ax.errorbar(x + 0.02 * (i - len(evaluations) / 2), mean, yerr=sig, fmt="o", ms=3, capsize=2, label=e.name)
    ax.set(xlabel="true δC9", ylabel="estimated δC9 (mean ± σ)", title="linearity")
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out


def _statistical_error(rows, key: str, errors: str) -> np.ndarray:
    """Per point: the error of the mean over the M sets (sigma / sqrt(M)), or of a standard deviation
    over them (the value / sqrt(2 (M - 1)), for sigma and for sigma / sigma_CRB).

    >>> _statistical_error([{"sigma": 0.1, "n_sets": 51}], "sigma", "sigma").round(4).tolist()
    [0.01]
    """
    if errors == "mean":
        return np.array([r["sigma"] / np.sqrt(max(r["n_sets"], 1)) for r in rows], dtype=float)
    return np.array([r[key] / np.sqrt(max(2 * (r["n_sets"] - 1), 1)) for r in rows], dtype=float)


def _sets_title(title: str, evaluations) -> str:
    """``title`` with the events per set N and the sets per point M of the evaluation.

    >>> class E: rows = [{"n_events": 2000, "n_sets": 40}]
    >>> _sets_title("sensitivity", [E()])
    'sensitivity: N = 2000 events per set, M = 40 sets per point'
    """
    n = sorted({int(r["n_events"]) for e in evaluations for r in e.rows})
    m = sorted({int(r["n_sets"]) for e in evaluations for r in e.rows})
    if not n:
        return title
    show = lambda v: str(v[0]) if len(v) == 1 else f"{v[0]}–{v[-1]}"  # noqa: E731
    return f"{title}: N = {show(n)} events per set, M = {show(m)} sets per point"


def _per_estimator(evaluations, key: str, path: Path, ylabel: str, title: str, reference=None,
                   errors: str | None = None, floor: bool = True) -> Path:
    """One line per estimator of a per-point column against the true delta C9, beside a reference.

    ``errors``: none, ``"mean"`` (the column is a mean over the sets) or ``"sigma"`` (a standard deviation
    over them, or proportional to one); see :func:`_statistical_error`. The title gives N and M.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if reference is not None:
        reference(ax)
    for e in evaluations:
        x, y, rows = _series(e, key)
        if errors:
            ax.errorbar(x, y, yerr=_statistical_error(rows, key, errors), fmt="o-", ms=3, capsize=2, label=e.name)
        else:
            ax.plot(x, y, "o-", ms=3, label=e.name)
    ax.set(xlabel="true δC9", ylabel=ylabel, title=_sets_title(title, evaluations))
    if floor:
        ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_sensitivity(evaluations, crb_curve: tuple[np.ndarray, np.ndarray], path: Path) -> Path:
    """sigma against delta C9 for every estimator, with its statistical error sigma / sqrt(2 (M - 1)), and the
    sigma_CRB curve."""
    return _per_estimator(evaluations, "sigma", path, "σ(δC9) ± σ/√(2(M−1))", "sensitivity",
                          lambda ax: ax.plot(*crb_curve, color="k", lw=1.5, label="σ_CRB (Cramér–Rao)"),
                          errors="sigma")


def plot_bias(evaluations, path: Path) -> Path:
    """bias against delta C9 for every estimator, with the error of the mean over the sets."""
    return _per_estimator(evaluations, "bias", path, "bias (mean − truth)", "bias",
                          lambda ax: ax.axhline(0, color="0.6", lw=1), errors="mean", floor=False)


def plot_sigma_over_crb(evaluations, path: Path) -> Path:
    """sigma / sigma_CRB for all estimators on one figure, with the statistical error of sigma: 1 is optimal."""
    return _per_estimator(evaluations, "sigma_over_crb", path, "σ / σ_CRB", "how close to optimal",
                          lambda ax: ax.axhline(1, color="k", lw=1.5, label="Cramér–Rao bound"), errors="sigma")


def plot_image_slices(images: np.ndarray, labels: Sequence[float], path: Path) -> Path:
    """Central cos_theta_K slice of the mean-q2 channel for a few example images."""
    plt = _pyplot()
    n = min(len(images), 4)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3), squeeze=False)
    for ax, img, lab in zip(axes[0], images[:n], labels[:n]):
        b = img.shape[-1]
        sl = np.array(img[0, :, b // 2, :], dtype=float)
        sl[np.array(img[1, :, b // 2, :]) == 0] = np.nan
        im = ax.imshow(sl.T, origin="lower", extent=[-1, 1, 0, 2 * np.pi], aspect="auto", cmap="viridis")
        ax.set(xlabel="cos θ_μ", ylabel="χ", title=f"δC9 = {lab:+.2f}")
        fig.colorbar(im, ax=ax, label="mean q² (GeV²)")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_training_curves(histories: Mapping[str, Mapping], path: Path) -> Path:
    """Train and validation loss per epoch for every trained network."""
    plt = _pyplot()
    n = max(len(histories), 1)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for ax, (name, h) in zip(axes[0], histories.items()):
        ax.plot(h.get("train_loss", []), label="train")
        ax.plot(h.get("val_loss", []), label="validation")
        if h.get("best_epoch") is not None:
            ax.axvline(h["best_epoch"], color="0.6", ls="--", lw=1, label="best")
        ax.set(xlabel="epoch", ylabel="loss", title=name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_calibration(evaluations, path: Path) -> Path:
    """Are the per-set widths honest? For every estimator that gives widths, from the PIT values of its
    test sets pooled over the points (``Evaluation.pit``): the expected-coverage curve (the fraction of
    sets whose central interval at each nominal level covers the truth, sbi's and TARP's figure; on the
    diagonal when calibrated, below it when the widths are too small), with the diagonal's +-2 sigma
    binomial band, and the PIT histogram (flat when calibrated)."""
    from kernels.coverage import expected_coverage

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    pooled = [(e, e.pooled_pit()) for e in evaluations if e.pit]
    lv = np.linspace(0, 1, 101)
    if pooled:
        m = min(u.size for _, u in pooled)
        band = 2 * np.sqrt(lv * (1 - lv) / m)
        ax1.fill_between(lv, lv - band, lv + band, color="0.85", label=f"±2σ binomial, {m} sets")
    ax1.plot([0, 1], [0, 1], color="k", lw=1, label="calibrated")
    bins = np.linspace(0, 1, 11)
    for e, u in pooled:
        verdict = (e.calibration or {}).get("verdict", "untested")
        nominal, empirical = expected_coverage(u, levels=lv)
        ax1.plot(nominal, empirical, "-", lw=1.5, label=f"{e.name} ({verdict})")
        ax2.hist(u, bins=bins, density=True, histtype="step", lw=1.5, label=e.name)
    ax1.set(xlabel="nominal level of the central interval", ylabel="empirical coverage",
            title="expected coverage", xlim=(0, 1), ylim=(0, 1))
    ax1.set_aspect("equal")
    ax1.legend(fontsize=8, loc="upper left")
    ax2.axhline(1, color="k", lw=1, label="uniform")
    ax2.set(xlabel="PIT  Φ((truth − estimate) / width)", ylabel="density", title="PIT histogram", xlim=(0, 1))
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def _log_log(ax, ticks) -> None:
    """Log-log axes with the N values as the x ticks and plain numbers on y."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def plot_luminosity_bounds(rows: Sequence[Mapping], path: Path, title: str = "",
                           estimators: Mapping[str, tuple[float, float]] | None = None) -> Path:
    """σ_CRB (form factors fixed) and σ_CRB,eff (profiled; with the power corrections too, where the rows have
    them) against N, log-log, for each window set, with a 1/√N guide through the first profiled bound. ``rows``: :func:`orchestrator.evaluate.bounds.luminosity_bounds`.
    ``estimators``: name -> (N, σ) of estimators measured at the rows' δC9, drawn as points beside the bounds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    labels = list(dict.fromkeys(r["windows"] for r in rows))
    for i, label in enumerate(labels):
        sel = sorted((r for r in rows if r["windows"] == label), key=lambda r: r["n_events"])
        n = np.array([r["n_events"] for r in sel], dtype=float)
        color = f"C{i}"
        name = f"q² ∈ [{label.replace('-', ', ').replace('+', '] + [')}]"
        ax.plot(n, [r["sigma_crb"] for r in sel], "o--", color=color, lw=1.2, ms=4, label=f"{name}: form factors fixed")
        ax.plot(n, [r["sigma_crb_eff"] for r in sel], "s-", color=color, lw=1.8, ms=5,
                label=f"{name}: form factors profiled (flavio prior)")
        pc = np.array([r.get("sigma_crb_eff_pc", np.nan) for r in sel], dtype=float)
        if np.all(np.isfinite(pc)) and pc.size:
            ax.plot(n, pc, "^-", color=color, lw=2.4, ms=5, alpha=0.7, label=f"{name}: and power corrections")
        if i == 0 and n.size:  # through the first profiled point: the fixed bounds lie on such lines
            grid = np.geomspace(n.min(), n.max(), 50)
            ax.plot(grid, sel[0]["sigma_crb_eff"] * np.sqrt(n[0] / grid), ":", color="0.4", lw=1.2,
                    label="∝ 1/√N (guide)")
    markers = "xP*Dv<>"
    for j, (name, (n_est, sigma)) in enumerate((estimators or {}).items()):
        ax.plot([n_est], [sigma], markers[j % len(markers)], color=f"C{len(labels) + j}", ms=7, mew=1.6, ls="none",
                label=f"{name} (measured)")
    _log_log(ax, sorted({r["n_events"] for r in rows}))
    ax.set_xlabel("N, events per set in [1.1, 6.0] GeV² (∝ luminosity)")
    ax.set_ylabel("σ_CRB(δC9)")
    ax.grid(True, which="both", color="0.9", lw=0.6)
    ax.legend(fontsize=7.5, loc="lower left")
    ax.set_title(title or "Cramér–Rao bound on δC9 against luminosity", fontsize=10)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_joint_bounds(rows: Sequence[Mapping], path: Path, title: str = "") -> Path:
    """One panel per coefficient: its bound alone, its marginal bound with the other coefficients free, and
    that with the form factors profiled (and the power corrections, where the rows have them), against N,
    log-log, per window set. ``rows``: :func:`orchestrator.evaluate.bounds.joint_bounds`."""
    plt = _pyplot()
    coeffs = list(dict.fromkeys(r["coefficient"] for r in rows))
    labels = list(dict.fromkeys(r["windows"] for r in rows))
    fig, axes = plt.subplots(1, len(coeffs), figsize=(4.8 * len(coeffs), 4.4), squeeze=False)
    for ax, c in zip(axes[0], coeffs):
        for i, label in enumerate(labels):
            sel = sorted((r for r in rows if r["windows"] == label and r["coefficient"] == c),
                         key=lambda r: r["n_events"])
            n = np.array([r["n_events"] for r in sel], dtype=float)
            name = f"[{label.replace('-', ', ').replace('+', '] + [')}]"
            col = f"C{i}"
            ax.plot(n, [r["sigma_crb_alone"] for r in sel], ".:", color=col, lw=1, label=f"{name}: alone")
            ax.plot(n, [r["sigma_crb"] for r in sel], "o--", color=col, lw=1.2, ms=4, label=f"{name}: others free")
            ax.plot(n, [r["sigma_crb_eff"] for r in sel], "s-", color=col, lw=1.8, ms=5,
                    label=f"{name}: and form factors profiled")
            pc = np.array([r["sigma_crb_eff_pc"] for r in sel], dtype=float)
            if pc.size and np.isfinite(pc).all():
                ax.plot(n, pc, "^-", color=col, lw=2.4, ms=5, alpha=0.7, label=f"{name}: and power corrections")
        _log_log(ax, sorted({r["n_events"] for r in rows}))
        ax.set_xlabel("N, events per set in [1.1, 6.0] GeV²")
        ax.set_ylabel(f"σ_CRB(δ{c[1:].upper().replace('P', chr(8242))})")
        ax.grid(True, which="both", color="0.9", lw=0.6)
    axes[0][0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_joint_sigma_over_crb(evaluations, shifts: Sequence[str], path: Path) -> Path:
    """One panel per coefficient: each estimator's sigma / sigma_CRB (the marginal bound) at every evaluation
    point, one series per set size N, with the standard error of a sigma from the point's sets and the line
    at 1. ``evaluations``: objects with ``name`` and joint ``rows`` (:mod:`orchestrator.jobs.joint_run`)."""
    plt = _pyplot()
    shifts = list(shifts)
    fig, axes = plt.subplots(1, len(shifts), figsize=(5.2 * len(shifts), 4.2), squeeze=False)
    markers = "os^Dv<>"
    for ax, s in zip(axes[0], shifts):
        ax.axhline(1.0, color="0.5", lw=1)
        k = 0
        for ev in evaluations:
            for n in sorted({int(r["n_events"]) for r in ev.rows}):
                sel = [r for r in ev.rows if int(r["n_events"]) == n]
                y = np.array([r[f"sigma_over_crb_{s}"] for r in sel], dtype=float)
                err = y / np.sqrt(np.maximum(2 * (np.array([r["n_sets"] for r in sel], dtype=float) - 1), 1))
                x = np.arange(len(sel)) + 0.08 * (k - 1)
                ax.errorbar(x, y, yerr=err, fmt=markers[k % len(markers)], ms=4, capsize=2, ls="none",
                            label=f"{ev.name}, N = {n:,}")
                k += 1
        labels = [",".join(f"{float(r[f'{c}_true']):g}" for c in shifts) for r in sel]
        ax.set_xticks(np.arange(len(labels)))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel(f"evaluation point ({', '.join(shifts)})")
        ax.set_ylabel(f"σ / σ_CRB of δ{s[1:].upper().replace('P', chr(8242))} (others free)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
