"""The sensitivity figure: the statistical error of each sigma, and N and M in the title."""

from __future__ import annotations

import numpy as np
import pytest


class _Evaluation:
    def __init__(self, name, sigmas, n_sets=51, n_events=2000):
        self.name = name
        self.rows = [{"dc9_true": float(d), "sigma": s, "n_sets": n_sets, "n_events": n_events, "mean": d, "bias": 0.0,
                      "sigma_over_crb": 1.0} for d, s in zip((-1.0, 0.0, 1.0), sigmas)]


@pytest.fixture
def sensitivity_axes(tmp_path, monkeypatch):
    """The axes of the sensitivity figure of two estimators (captured as it is saved)."""
    from orchestrator.report import plots

    saved = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (saved.append(fig), real(fig, path))[1])
    evaluations = [_Evaluation("ml_fit", [0.10, 0.12, 0.14]), _Evaluation("deepsets", [0.2, 0.2, 0.2])]
    crb = (np.linspace(-1, 1, 5), np.full(5, 0.1))
    path = plots.plot_sensitivity(evaluations, crb, tmp_path / "sensitivity.png")
    assert path.stat().st_size > 1000
    return saved[0].axes[0]


def test_each_sigma_has_its_statistical_error_as_an_error_bar(sensitivity_axes):
    from matplotlib.container import ErrorbarContainer

    bars = [c for c in sensitivity_axes.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in bars] == ["ml_fit", "deepsets"]
    segments = bars[0].lines[2][0].get_segments()
    half = [(seg[1][1] - seg[0][1]) / 2 for seg in segments]
    np.testing.assert_allclose(half, np.array([0.10, 0.12, 0.14]) / np.sqrt(2 * 50))


def test_the_title_gives_the_events_per_set_and_the_number_of_sets(sensitivity_axes):
    assert sensitivity_axes.get_title() == "sensitivity: N = 2000 events per set, M = 51 sets per point"
