"""Shared physics fixtures: theory tables are built once per test session, in a private cache."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def theory_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("theory-cache")


@pytest.fixture(scope="session")
def c9_table(theory_cache):
    from kernels import theory

    return theory.jtable(["C9_bsmumu"], cache=theory_cache)


@pytest.fixture(scope="session")
def c9_c10_table(theory_cache):
    from kernels import theory

    return theory.jtable(["C9_bsmumu", "C10_bsmumu"], cache=theory_cache)


@pytest.fixture(scope="session")
def flavio_prediction():
    """flavio's binned prediction of an observable at real shifts {coefficient: value}."""
    import flavio

    def predict(name: str, shifts: dict, q2min: float, q2max: float) -> float:
        wc = flavio.WilsonCoefficients()
        wc.set_initial({k: v for k, v in shifts.items() if v}, scale=4.8, eft="WET", basis="flavio")
        return float(flavio.np_prediction(f"<{name}>(B0->K*mumu)", wc, q2min, q2max))

    return predict


def events_f64(arr):
    """(4, N) float32 sampler output -> float64 columns."""
    return tuple(np.asarray(a, dtype=np.float64) for a in arr)
