"""Per-point metrics against values computed by hand."""

import math

import numpy as np
import pytest

from kernels.metrics import POINT_COLUMNS, linearity, point_metrics


def test_point_metrics_match_hand_computed_values():
    x = np.array([0.8, 1.0, 1.1, 1.5])
    e = np.array([0.2, 0.2, 0.4, 0.5])
    row = point_metrics(x, e, truth=1.0, sigma_crb=0.25, n_events=500)
    mu = 1.1
    assert row["mean"] == pytest.approx(mu)
    assert row["bias"] == pytest.approx(0.1)
    sd = math.sqrt(((0.8 - mu) ** 2 + (1.0 - mu) ** 2 + 0 + (1.5 - mu) ** 2) / 3)
    assert row["sigma"] == pytest.approx(sd)
    assert row["sigma_left"] == pytest.approx(math.sqrt(((0.8 - mu) ** 2 + (1.0 - mu) ** 2) / 2))
    assert row["sigma_right"] == pytest.approx(math.sqrt((0.0**2 + (1.5 - mu) ** 2) / 2))
    assert row["mse"] == pytest.approx((0.04 + 0 + 0.01 + 0.25) / 4)
    assert row["sigma_over_crb"] == pytest.approx(sd / 0.25)
    pulls = np.array([-1.0, 0.0, 0.25, 1.0])
    assert row["pull_mean"] == pytest.approx(pulls.mean())
    assert row["pull_width"] == pytest.approx(pulls.std(ddof=1))
    assert (row["n_sets"], row["n_events"], row["dc9_true"]) == (4, 500, 1.0)
    # |pull| <= z_68 = 0.994 for 2 of 4 sets, <= z_95 = 1.96 for all of them
    assert (row["coverage_68"], row["coverage_95"]) == (0.5, 1.0)
    assert math.isnan(row["sigma_crb_image"])
    assert tuple(row) == POINT_COLUMNS


def test_the_columns_are_the_contract_in_order():
    assert POINT_COLUMNS == (
        "dc9_true", "n_sets", "n_events", "mean", "bias", "sigma", "sigma_left", "sigma_right", "sigma_crb",
        "sigma_over_crb", "mse", "pull_mean", "pull_width", "coverage_68", "coverage_95", "sigma_crb_image",
    )


def test_coverage_is_nan_without_widths_or_truth_and_the_image_bound_is_passed_through():
    row = point_metrics([0.1, 0.2, 0.3], truth=0.0, sigma_crb=0.1, n_events=10, sigma_crb_image=0.12)
    assert math.isnan(row["coverage_68"]) and math.isnan(row["coverage_95"])
    assert row["sigma_crb_image"] == 0.12
    row = point_metrics([0.1, 0.2, 0.3], [0.1, 0.1, 0.1], truth=float("nan"), sigma_crb=0.1, n_events=10)
    assert math.isnan(row["coverage_68"]) and math.isnan(row["coverage_95"])
    row = point_metrics([0.1, 0.2, 0.3], [0.0, float("nan"), -1.0], truth=0.0, sigma_crb=0.1, n_events=10)
    assert math.isnan(row["coverage_68"])


def test_pulls_are_nan_without_uncertainties():
    row = point_metrics([0.1, 0.2, 0.3], truth=0.0, sigma_crb=0.1, n_events=10)
    assert math.isnan(row["pull_mean"]) and math.isnan(row["pull_width"])


def test_linearity_recovers_a_known_line():
    d = np.linspace(-2, 1, 7)
    fit = linearity(d, 0.9 * d - 0.05, sigma=np.full(7, 0.1))
    assert fit["slope"] == pytest.approx(0.9) and fit["intercept"] == pytest.approx(-0.05)
