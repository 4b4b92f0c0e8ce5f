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


def test_the_luminosity_section_puts_each_estimator_beside_the_bound_at_its_set_size(tmp_path):
    from types import SimpleNamespace

    from orchestrator.report import plots
    from orchestrator.report.markdown import luminosity_section

    rows = [{"windows": "1.1-6.0", "level": "gen", "dc9": 0.0, "prior_scale": 1.0, "n_events": n,
             "sigma_crb": 1 / np.sqrt(n), "sigma_crb_eff": 2 / np.sqrt(n), "eff_over_fixed": 2.0,
             "sigma_crb_eff_pc": float("nan"), "pc_over_fixed": float("nan")} for n in (2000, 24000)]
    fit = SimpleNamespace(name="ml_fit_profiled", rows=[{"dc9_true": 0.0, "n_events": 24000, "sigma": 2.2 / np.sqrt(24000)},
                                                         {"dc9_true": 1.0, "n_events": 24000, "sigma": 9.0}])
    text = "\n".join(luminosity_section(rows, [fit]))
    assert "| 24,000 | 0.0065 | 0.0129 | 2.00 |" in text
    assert "`ml_fit_profiled` at N = 24,000: σ = 0.0142, 1.100 × the profiled bound" in text
    assert "9.0" not in text  # only the point at δC9 = 0
    png = plots.plot_luminosity_bounds(rows, tmp_path / "l.png", estimators={"ml_fit_profiled": (24000, 0.0142)})
    assert png.stat().st_size > 0


def _joint_row(t9, t10, mean9, mean10, s9=0.04, s10=0.09):
    return {"dc9_true": t9, "dc10_true": t10, "mean_dc9": mean9, "mean_dc10": mean10, "sigma_dc9": s9,
            "sigma_dc10": s10, "sigma_crb_dc9": 0.04, "sigma_crb_dc10": 0.09, "corr_dc9_dc10": -0.3,
            "corr_crb_dc9_dc10": -0.25}


def test_the_joint_fit_corner_plot_has_each_marginal_on_its_diagonal(tmp_path, monkeypatch):
    from orchestrator.report import plots

    saved = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (saved.append(fig), real(fig, path))[1])
    rows = [_joint_row(-1.0, 0.0, -0.98, 0.01, s9=0.05), _joint_row(0.0, 0.5, 0.0, 0.5)]
    plots.plot_joint_fit(rows, ["dc9", "dc10"], tmp_path / "corner.png")
    axes = saved[0].axes
    grid = np.array(axes).reshape(2, 2)
    diag = grid[0, 0]
    assert diag.get_visible() and grid[1, 1].get_visible() and grid[1, 0].get_visible()
    assert not grid[0, 1].lines  # the empty corner holds the legend only
    peaks = sorted((float(ln.get_xdata()[np.argmax(ln.get_ydata())]), float(ln.get_ydata().max()))
                   for ln in diag.lines)
    # per point the bound's Gaussian at the truth and the estimates' at their mean, with 1 / (sigma sqrt(2 pi))
    np.testing.assert_allclose([p[0] for p in peaks], [-1.0, -0.98, 0.0, 0.0], atol=1e-9)
    heights = {round(x, 2): h for x, h in peaks}
    assert heights[-0.98] == pytest.approx(1 / (0.05 * np.sqrt(2 * np.pi)))
    assert diag.get_xlim() == grid[1, 0].get_xlim()  # the diagonal shares its column's axis


def test_the_corner_plot_centres_the_bound_on_the_mean_when_the_truth_is_unknown(tmp_path, monkeypatch):
    from orchestrator.report import plots

    saved = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (saved.append(fig), real(fig, path))[1])
    plots.plot_joint_fit([_joint_row(np.nan, np.nan, 0.3, -0.2)], ["dc9", "dc10"], tmp_path / "c.png")
    diag = np.array(saved[0].axes).reshape(2, 2)[0, 0]
    centres = [float(ln.get_xdata()[np.argmax(ln.get_ydata())]) for ln in diag.lines]
    np.testing.assert_allclose(centres, [0.3, 0.3], atol=1e-9)
