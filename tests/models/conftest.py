"""Fixtures of the models tests: a small theory table (built once per session) and toy data makers."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def c9_table(tmp_path_factory):
    """A delta C9 table on a coarse q2 grid (0.1 GeV^2), in a private cache: enough for sampling and fits."""
    from kernels import theory

    return theory.jtable(["C9_bsmumu"], spacing=0.1, cache=tmp_path_factory.mktemp("models-theory-cache"))


@pytest.fixture(scope="session")
def c9_c10_table_coarse(tmp_path_factory):
    """A (delta C9, delta C10) table on the same coarse q2 grid, in a private cache."""
    from kernels import theory

    return theory.jtable(["C9_bsmumu", "C10_bsmumu"], spacing=0.1, cache=tmp_path_factory.mktemp("models-c9c10-cache"))


def _toy_images(n: int, seed: int, bins: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Images whose mean-q2 channel is 3 + 0.8 * label (+ noise), empty voxels NaN; labels in [-1, 1]."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, n).astype(np.float32)
    counts = rng.poisson(2.0, (n, bins, bins, bins)).astype(np.float32)
    q2 = (3.0 + 0.8 * y[:, None, None, None] + rng.normal(0, 0.5, counts.shape)).astype(np.float32)
    q2[counts == 0] = np.nan
    return np.stack([q2, counts], axis=1), y


def _toy_events(mean: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Events (n, 4): q2 ~ N(mean, 1), the angles uniform in their ranges."""
    ev = np.empty((n, 4), dtype=np.float32)
    ev[:, 0] = rng.normal(mean, 1.0, n)
    ev[:, 1] = rng.uniform(-1, 1, n)
    ev[:, 2] = rng.uniform(-1, 1, n)
    ev[:, 3] = rng.uniform(0, 2 * np.pi, n)
    return ev


def _physical_sets(M: int, N: int, seed: int = 0) -> np.ndarray:
    """M sets of N events with valid angles and q2 in [1.1, 6] (uniform): input for shape tests."""
    rng = np.random.default_rng(seed)
    ev = np.empty((M, N, 4), dtype=np.float32)
    ev[..., 0] = rng.uniform(1.1, 6.0, (M, N))
    ev[..., 1] = rng.uniform(-1, 1, (M, N))
    ev[..., 2] = rng.uniform(-1, 1, (M, N))
    ev[..., 3] = rng.uniform(0, 2 * np.pi, (M, N))
    return ev


@pytest.fixture
def toy_images():
    return _toy_images


@pytest.fixture
def toy_events():
    return _toy_events


@pytest.fixture
def physical_sets():
    return _physical_sets


# --- the linear-Gaussian toy of the global fit's inverse map and cGAN (known posterior) -----------------


@pytest.fixture(scope="module")
def toy():
    """x = A theta + b + eps with eps ~ N(0, Sigma): K = 8 observables, P = 2 parameters."""
    from models.inverse_map import LinearGaussianToy

    return LinearGaussianToy.random(n_obs=8, seed=0, noise=0.2)


@pytest.fixture(scope="module")
def grid(toy):
    """A 40 x 40 grid of parameters over the toy's box."""
    return toy.grid(40)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (the 2-core machine is shared), restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
