"""kernels.pool: sets thinned from one pool follow the generator at any shift in the box (the ML fit on them is
unbiased and reaches the bound: no event twice), reproducibly, and bad requests are refused."""

import numpy as np
import pytest

from kernels import likelihood
from kernels.errors import ConfigError
from kernels.pool import EventPool

BOX = [[-1.0, 1.0], [-1.0, 1.0]]
CORNERS = [[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [0.0, 0.0]]


@pytest.fixture(scope="module")
def pool(c9_c10_table):
    return EventPool(c9_c10_table, CORNERS, 600_000, seed=7, box=BOX)


def test_thinned_sets_fit_to_the_shift_with_the_bounds_spread(c9_c10_table, pool):
    truth, n, m = np.array([0.6, -0.5]), 2000, 150
    rng = np.random.default_rng(0)
    sets = np.stack([pool.draw(truth, n, rng) for _ in range(m)])
    assert all(len(np.unique(s, axis=0)) == n for s in sets[:5])  # no event twice in a set
    fit = likelihood.fit_sets(c9_c10_table, sets)
    assert fit.valid.all()
    bound = np.sqrt(np.diag(np.linalg.inv(likelihood.fisher_information(c9_c10_table, truth)) / n))
    ratio = fit.values.std(0, ddof=1) / bound
    assert np.all((ratio > 0.85) & (ratio < 1.15)), ratio  # a 150-set spread is known to about 6%
    assert np.all(np.abs(fit.values.mean(0) - truth) < 4 * bound / np.sqrt(m))
    assert pool.overflow <= 1e-3 * pool.kept


def test_the_same_generator_gives_the_same_events_and_refusals(c9_c10_table, pool):
    a = pool.draw([0.2, 0.1], 500, np.random.default_rng(3))
    b = pool.draw([0.2, 0.1], 500, np.random.default_rng(3))
    assert np.array_equal(a, b) and a.shape == (500, 4)
    with pytest.raises(ConfigError, match="outside the pool's box"):
        pool.draw([1.5, 0.0], 10, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"shifts must have shape \(2,\)"):
        pool.draw([0.0], 10, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="too small"):
        pool.draw([0.0, 0.0], 700_000, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"components must have shape"):
        EventPool(c9_c10_table, [[0.0, 0.0, 0.0]], 100, seed=1)
