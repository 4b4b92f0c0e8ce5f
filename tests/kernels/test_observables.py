"""The global-fit observable set: loading and its one-line errors, the experimental Gaussian, the verified surrogate.

flavio work is done once per module (the demo set's 6 observables; the surrogate's
design points are memoised so that refits with other forms cost nothing).
"""

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from kernels.errors import ConfigError

PRESETS = Path(__file__).resolve().parents[2] / "orchestrator" / "config" / "presets" / "globalfit"
DEMO = PRESETS / "observables-demo.yaml"
SEED = PRESETS / "observables-lhcb-seed.yaml"
P5P_46 = ("<P5p>(B0->K*mumu)", 4.0, 6.0)


@pytest.fixture(scope="module")
def demo():
    from kernels.observables import load_observable_set

    return load_observable_set(DEMO)


@pytest.fixture(scope="module")
def four(demo):
    """P5' 4-6, P2 4-6, dBR/dq2 1.1-2.5, R_K 1.1-6: one observable per form, and flavio's noisiest (R_K)."""
    return demo.subset([0, 2, 3, 4])


@pytest.fixture(scope="module")
def flavio_memo(four):
    """predict(four, points), memoised on the points' bytes."""
    from kernels.observables import predict

    memo = {}

    def fn(points):
        key = np.ascontiguousarray(points, dtype=float).tobytes()
        if key not in memo:
            memo[key] = predict(four, points)
        return memo[key]

    return fn


@pytest.fixture(scope="module")
def surrogate(four, flavio_memo):
    from kernels.observables import fit_surrogate

    return fit_surrogate(four, n_design=32, n_check=4, predict_fn=flavio_memo)


@pytest.fixture(scope="module")
def random_points():
    return np.random.default_rng(123).uniform((-2.5, -1.5), (1.5, 1.5), size=(3, 2))


def test_the_presets_load_and_their_keys_are_stable(demo):
    from kernels.observables import load_observable_set

    seed = load_observable_set(SEED)
    assert len(seed) == 37 and len(seed.measurements) == 9
    assert demo.observables[0] == P5P_46 and len(demo) == 6
    assert demo.key == load_observable_set(DEMO).key != seed.key
    assert pickle.loads(pickle.dumps(demo)) == demo  # shipped to workers as it is


def _edited(tmp_path, edit):
    doc = json.loads(json.dumps(yaml.safe_load(DEMO.read_text())))  # flavio makes YAML load OrderedDicts
    edit(doc)
    path = tmp_path / "set.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _set(doc, where, key, value):
    doc[where][key] = value


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["observables"][2].update(observable="<P5>(B0->K*mumu)"), "observables[2]: flavio knows no observable '<P5>(B0->K*mumu)'"),
        (lambda d: d["observables"][0].update(q2max=5.0), "observables[0]: <P5p>(B0->K*mumu) [4, 5] is constrained by none of the listed measurements"),
        (lambda d: d["observables"][1].pop("q2max"), "observables[1]: expected {observable, q2min, q2max}"),
        (lambda d: d["observables"][3].update(q2min=3.0, q2max=2.0), "observables[3]: <dBR/dq2>(B0->K*mumu) needs 0 <= q2min < q2max"),
        (lambda d: _set(d, "measurements", 1, "LHCb B->K*mumu 2020 P 6-9"), "measurements[1]: flavio knows no measurement 'LHCb B->K*mumu 2020 P 6-9'"),
        (lambda d: d["measurements"].append("LHCb B0->Kmumu BR 2014"), "measurements[4]: 'LHCb B0->Kmumu BR 2014' constrains none of the listed observables/bins"),
        (lambda d: d.update(extra=1), "an observable set has exactly the keys observables and measurements"),
    ],
)
def test_a_bad_set_gives_one_line_naming_the_entry(tmp_path, edit, message):
    from kernels.observables import load_observable_set

    path = _edited(tmp_path, edit)
    with pytest.raises(ConfigError) as err:
        load_observable_set(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_experimental_is_flavios_gaussian_of_each_measurement(demo):
    import flavio

    from kernels.observables import experimental

    central, cov = experimental(demo)
    assert central.shape == (6,) and cov.shape == (6, 6) and np.allclose(cov, cov.T)

    # P5' 4-6: a multivariate normal (FL, P1..P8'), marginalised onto P5': its own centre and error
    m = flavio.Measurement["LHCb B->K*mumu 2020 P 4-6"]
    assert central[0] == pytest.approx(m.get_central(P5P_46), rel=1e-12)
    assert np.sqrt(cov[0, 0]) == pytest.approx(m.get_1d_errors_rightleft()[P5P_46][0], rel=1e-12)
    assert cov[0, 1] == 0 and cov[0, 2] != 0  # other measurement: uncorrelated; P2 of the same one: correlated

    # R_K and R_K* 1.1-6 keep LHCb's correlation
    rk = flavio.Measurement["LHCb RK RK* 2022"]
    dist = rk._parameters[demo.observables[4]][1]
    i, j = rk._parameters[demo.observables[4]][0], rk._parameters[demo.observables[5]][0]
    assert cov[4, 5] == pytest.approx(dist.covariance[i, j], rel=1e-12) and cov[4, 5] != 0

    # dBR/dq2 1.1-2.5 is a numerical (asymmetric) distribution: the moments flavio's FastLikelihood samples
    br = flavio.Measurement["LHCb B0->K*mumu BR 2016"]
    state = np.random.get_state()
    np.random.seed(7)
    draws = br.get_random_all(size=400_000)[demo.observables[3]]
    np.random.set_state(state)
    sd = draws.std()
    assert abs(central[3] - draws.mean()) < 5 * sd / np.sqrt(len(draws))
    assert np.sqrt(cov[3, 3]) == pytest.approx(sd, rel=5e-3)
    assert central[3] != pytest.approx(br.get_central(demo.observables[3]), rel=1e-3)  # the mean, not the mode


def test_a_singular_experimental_covariance_names_the_entry(demo, monkeypatch):
    import flavio

    from kernels import observables

    real, rk = observables._moments, flavio.Measurement["LHCb RK RK* 2022"]._parameters[demo.observables[4]][1]

    def degenerate(dist, positions):
        mean, cov = real(dist, positions)
        if dist is rk:  # R_K and R_K*: make them 100% correlated with equal errors
            cov = np.full((2, 2), cov[0, 0])
        return mean, cov

    monkeypatch.setattr(observables, "_moments", degenerate)
    with pytest.raises(ConfigError, match=r"singular at <Rmue>\(B0->K\*ll\) \[1.1, 6\] \(experimental\)"):
        observables.experimental(demo)


def test_the_surrogate_is_exact_where_it_says_so(surrogate, random_points, flavio_memo):
    # dBR/dq2 and R_K are quadratic in the shifts, P2 a ratio of quadratics, P5' N/sqrt(quartic)
    assert surrogate.form == ("sqrt", "ratio", "quadratic", "quadratic")
    assert np.all(surrogate.max_rel_error <= surrogate.tol) and surrogate.tol == 1e-6

    direct = flavio_memo(random_points)  # points the fit never saw
    dev = np.abs(surrogate.closed_form(random_points) - direct) / surrogate.scale
    assert np.all(dev <= surrogate.tol), dev.max(axis=0)

    plain = dataclasses.replace(surrogate, predict_fn=None)  # what the orchestrator ships: picklable
    again = pickle.loads(pickle.dumps(plain))
    assert np.array_equal(again.closed_form(random_points), surrogate.closed_form(random_points))


def test_a_form_that_does_not_fit_is_detected_and_falls_back_to_flavio(four, surrogate, random_points, flavio_memo):
    from kernels.observables import fit_surrogate

    # without the sqrt form, P5' (a ratio with a square root) has no exact closed form
    quad = fit_surrogate(four, n_design=32, n_check=4, forms=("quadratic", "ratio"), predict_fn=flavio_memo)
    assert quad.form == (None,) + surrogate.form[1:]
    assert quad.max_rel_error[0] > 100 * quad.tol  # measured: 1e-3
    partial = quad.predict(random_points, direct=False)
    assert np.all(np.isnan(partial[:, 0])) and not np.any(np.isnan(partial[:, 1:]))
    full = quad.predict(random_points)
    assert np.array_equal(full[:, 0], flavio_memo(random_points)[:, 0])


def test_the_surrogate_refuses_bad_settings(demo):
    from kernels.observables import fit_surrogate

    with pytest.raises(ConfigError, match="unknown \\['cubic'\\]"):
        fit_surrogate(demo, forms=("cubic",))
    with pytest.raises(ConfigError, match="n_design=20 is too small"):
        fit_surrogate(demo, n_design=20)


def test_the_theory_covariance_is_seeded_and_cached(demo, tmp_path):
    from kernels.observables import theory_covariance

    small = demo.subset([3, 5])  # dBR/dq2 and R_K*: cheap
    cov = theory_covariance(small, n=4, seed=3, cache=tmp_path)
    (path,) = tmp_path.glob("smcov-*-n4-seed3.npy")
    assert np.array_equal(np.load(path), cov) and cov.shape == (2, 2) and np.all(np.diag(cov) > 0)
    assert np.array_equal(theory_covariance(small, n=4, seed=3, cache=False), cov)  # same seed, same draws
    assert not np.array_equal(theory_covariance(small, n=4, seed=4, cache=False), cov)
