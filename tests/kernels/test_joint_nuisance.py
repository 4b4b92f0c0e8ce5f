"""The weights that reweight a pool drawn at u = 0 to any (delta C9, u): exact in form, at every level.

Three form factors stand in for the 19 (the session's small bi-quadratic tables)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import detector, joint, joint_nuisance, likelihood, nuisances
from kernels.theory import monomials

FF = ("B->K* BSZ a0_V", "B->K* BSZ a1_T1", "B->K* BSZ a0_A1")


@pytest.fixture(scope="module")
def nt(ff_tables_cache):
    return nuisances.nuisance_table(["C9_bsmumu"], form_factors=FF, spacing=0.25, cache=ff_tables_cache)


@pytest.mark.parametrize("level", ["gen", "det_bkg"])
def test_a_pool_at_the_central_world_is_reweighted_to_any_world(nt, level):
    det = detector.DetectorConfig()
    central = nt.at(np.zeros(3))
    eff = joint.true_efficiency(level, central.windows, det)
    norm_flat, norm_central = joint.normalisation(nt.flat, eff), joint.normalisation(central, eff)
    points = np.array([[-1.5], [0.5]])
    parts = [detector.sample_level_truth(central, [float(d)], 60_000, (3, k), level, det) for k, d in enumerate(points[:, 0])]
    x = np.concatenate([p.events.T for p in parts])
    b = np.concatenate([joint_nuisance.nuisance_mixture_weights(nt, p.truth.T, points, norm_flat, norm_central, p.is_signal)
                        for p in parts])
    if level == "det_bkg":  # background events carry the normalisation: their density depends on neither
        bkg = ~np.concatenate([p.is_signal for p in parts])
        assert bkg.any() and np.allclose(b[bkg], norm_flat)
    c, u = 0.3, np.array([0.8, -0.6, 0.5])
    m = nuisances.joint_monomials([c], u)
    # the pool's mean weight is the world's rate, over the mixture's (1 where the level keeps all)
    rate = float(monomials(np.array([[c]]))[0] @ joint.normalisation(nt.at(u), eff))
    assert b.mean(0) @ m == pytest.approx(rate, rel=0.02)
    w = b @ m
    direct = detector.sample_level_truth(nt.at(u), [c], 60_000, (4, 0), level, det).events.T
    unweighted = []
    for k in range(4):  # every variable's mean in that world, reweighted and drawn directly
        f, g = x[:, k], direct[:, k]
        got = np.sum(w * f) / np.sum(w)
        err = np.hypot(np.sqrt(np.var(f * w / w.mean()) / f.size), g.std() / np.sqrt(g.size))
        assert abs(got - g.mean()) < 4 * err, (k, got, g.mean(), err)
        unweighted.append(abs(f.mean() - g.mean()) / err)
    assert max(unweighted) > 8  # the pool itself is far from that world: the weights do the work
