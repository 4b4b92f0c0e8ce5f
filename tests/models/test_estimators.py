"""Every estimator answers predict(sets) with (M,) estimates and (M,) uncertainties or None."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import sampler
from kernels.errors import ConfigError
from kernels.likelihood import sigma_crb
from kernels.voxels import voxelize
from models.deepsets import DeepSets
from models.estimators import (
    DeepSetsEstimator,
    Estimator,
    EventPosteriorEstimator,
    MLFitEstimator,
    ResNetEstimator,
    check_sets,
)
from models.event_classifier import EventClassifier
from models.resnet3d import ResNet3d

M, N, BINS = 5, 40, 6


@pytest.fixture
def networks():
    torch.manual_seed(0)
    return {
        "resnet": ResNetEstimator(ResNet3d(depth=10, width=4, head_width=8), bins=BINS, events_per_image=N,
                                  batch_size=2),
        "deepsets": DeepSetsEstimator(DeepSets(hidden=8, latent=4), batch_size=2, event_chunk=16),
        "event_posterior": EventPosteriorEstimator(EventClassifier([-1.0, 0.0, 1.0], hidden=8, layers=1),
                                                   batch_size=2),
    }


def test_network_estimators_answer_predict_with_the_right_shapes(networks, physical_sets):
    sets = physical_sets(M, N)
    for name, est in networks.items():
        assert isinstance(est, Estimator) and est.name == name
        values, errors = est.predict(sets)
        assert values.shape == (M,) and values.dtype == np.float64 and np.all(np.isfinite(values))
        if name == "event_posterior":
            assert errors.shape == (M,) and np.all(errors > 0)
        else:
            assert errors is None


def test_predict_does_not_depend_on_the_batch_size(networks, physical_sets):
    sets = physical_sets(M, N)
    for est in networks.values():
        a = est.predict(sets)[0]
        est.batch_size = M
        assert np.allclose(est.predict(sets)[0], a, atol=1e-5)


def test_predict_leaves_the_model_in_its_mode(networks, physical_sets):
    est = networks["resnet"]
    est.model.train()
    est.predict(physical_sets(2, N))
    assert est.model.training


def test_resnet_estimator_voxelises_each_set_with_kernels_images(networks, physical_sets):
    est = networks["resnet"]
    sets = physical_sets(M, N)
    images = est.images(sets)
    s = sets[2]
    assert np.array_equal(images[2], voxelize(s[:, 1], s[:, 2], s[:, 3], s[:, 0], BINS)[0], equal_nan=True)
    assert np.allclose(est.predict(sets)[0], est.predict_images(images)[0], atol=1e-6)


def test_resnet_estimator_refuses_sets_of_another_size(networks, physical_sets):
    with pytest.raises(ConfigError, match="trained on images of 40 events"):
        networks["resnet"].predict(physical_sets(2, N + 1))


def test_malformed_sets_are_refused():
    with pytest.raises(ConfigError, match=r"\(M, N, 4\)"):
        check_sets(np.zeros((4, 10)))
    with pytest.raises(ConfigError, match=r"\(M, N, 4\)"):
        check_sets(np.zeros((2, 10, 3)))


def test_ml_fit_estimator_gives_values_and_hesse_errors(c9_table):
    truth, n_events = -0.7, 3000
    sets = sampler.sample_array(c9_table, [truth], 8 * n_events, (5, 0)).T.reshape(8, n_events, 4)
    est = MLFitEstimator(c9_table)
    assert isinstance(est, Estimator) and est.name == "ml_fit"
    values, errors = est.predict(sets)
    assert values.shape == errors.shape == (8,)
    crb = sigma_crb(c9_table, [truth], n_events)
    assert np.all(np.abs(values - truth) < 5 * crb)
    assert errors == pytest.approx(np.full(8, crb), rel=0.2)
    assert est.fit(sets).valid.all()
