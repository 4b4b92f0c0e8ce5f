"""Figures: what people would rather look at than read.

Plain matplotlib (Agg backend), one function per figure, each writing a PNG
atomically and returning its path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png.tmp")
    os.close(fd)
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    os.replace(tmp, path)
    return path


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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
