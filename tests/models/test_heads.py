"""The Gaussian head: widths that track heteroscedastic noise, the NLL losses, the point head unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from kernels.errors import ConfigError
from models.deepsets import DeepSets
from models.estimators import DeepSetsEstimator, ResNetEstimator
from models.heads import SIGMA_FLOOR, GaussianNLLLoss, is_gaussian, loss_for_head
from models.resnet3d import ResNet3d
from models.training import TrainConfig, evaluate_loss, make_loss, train

#: The hparams that a point ResNet3d wrote into checkpoints before the head existed.
OLD_RESNET_HPARAMS = {"depth": 10, "width": 4, "in_channels": 2, "head_width": 8, "dropout": 0.5, "outputs": 1,
                      "log_counts": True, "zero_init_residual": False}
OLD_DEEPSETS_HPARAMS = {"hidden": 8, "phi_layers": 3, "latent": 4, "rho_hidden": 8, "rho_layers": 3, "pool": "mean",
                        "log_n": True, "dropout": 0.0, "outputs": 1}


@pytest.fixture(autouse=True)
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 6, 6, 6, generator=g)
    x[:, 1] = x[:, 1].abs().round()
    return x


# --- the heteroscedastic toy ---------------------------------------------------------------------------------

N_TOY = 3


def _noise_width(u: np.ndarray) -> np.ndarray:
    """s(u): from 0.05 at u = -1 to 0.30 at u = +1, a factor 6."""
    return 0.05 + 0.25 * (1 + u) / 2


def _toy_sets(m: int, seed: int):
    """Sets of N_TOY events; u = the set's mean cos_theta_k; target f(u) + s(u) eps, f = sin 2u."""
    rng = np.random.default_rng(seed)
    ev = np.empty((m, N_TOY, 4), np.float32)
    ev[..., 0] = rng.uniform(1.1, 6.0, (m, N_TOY))
    ev[..., 1] = rng.uniform(-1, 1, (m, N_TOY))
    ev[..., 2] = rng.uniform(-1, 1, (m, N_TOY))
    ev[..., 3] = rng.uniform(0, 2 * np.pi, (m, N_TOY))
    u = ev[..., 2].mean(axis=1)
    f, s = np.sin(2 * u), _noise_width(u)
    y = (f + s * rng.standard_normal(m)).astype(np.float32)
    return ev, y, f, s


@pytest.mark.parametrize("loss", ["beta_nll", "gaussian_nll"])
def test_gaussian_widths_track_heteroscedastic_noise_and_cover_68_percent(loss):
    tr, va, te = _toy_sets(8000, 0), _toy_sets(2000, 1), _toy_sets(4000, 2)
    torch.manual_seed(0)
    net = DeepSets(hidden=32, phi_layers=2, latent=32, rho_layers=2, head="gaussian").fit_features(tr[0].reshape(-1, 4))
    data = [TensorDataset(torch.from_numpy(ev), torch.from_numpy(y)) for ev, y, *_ in (tr, va)]
    train(net, *data, TrainConfig(lr=3e-3, batch_size=128, epochs=25, loss=loss, patience=10, device="cpu"))
    mean, sigma = DeepSetsEstimator(net, batch_size=1024).predict(te[0])
    y, f, s = te[1], te[2], te[3]
    corr = float(np.corrcoef(sigma, s)[0, 1])
    ratio = float(sigma.mean() / s.mean())
    cov68 = float(np.mean(np.abs(y - mean) <= sigma))
    cov95 = float(np.mean(np.abs(y - mean) <= 1.959964 * sigma))
    rmse = float(np.sqrt(np.mean((mean - f) ** 2)))
    print(f"{loss}: corr(sigma, s) {corr:.4f}, mean sigma / mean s {ratio:.4f}, coverage 68 {cov68:.4f}, "
          f"95 {cov95:.4f}, rms(mean - f) {rmse:.4f} (mean s {s.mean():.4f})")
    assert corr > 0.9
    assert abs(ratio - 1) < 0.15
    assert abs(cov68 - 0.6827) < 0.03  # binomial sd of 4000 draws: 0.007
    assert abs(cov95 - 0.9545) < 0.02
    assert rmse < 0.3 * s.mean()  # the mean is learned too, well inside the noise


def test_a_point_network_has_no_width_on_the_same_toy():
    ev, y, *_ = _toy_sets(200, 3)
    torch.manual_seed(0)
    net = DeepSets(hidden=8, latent=4, rho_layers=1).fit_features(ev.reshape(-1, 4))
    train(net, TensorDataset(torch.from_numpy(ev), torch.from_numpy(y)), None,
          TrainConfig(batch_size=50, epochs=1, loss="mse", device="cpu"))
    mean, sigma = DeepSetsEstimator(net).predict(ev)
    assert mean.shape == (200,) and sigma is None


# --- the heads' shapes, hparams and checkpoints ----------------------------------------------------------------


def test_the_point_head_is_unchanged_and_an_old_checkpoint_loads():
    x = _images(3)
    torch.manual_seed(0)
    old = ResNet3d(**OLD_RESNET_HPARAMS).eval()
    assert old.hparams == OLD_RESNET_HPARAMS  # no "head" key: a point checkpoint is written as before
    assert old(x).shape == (3,)
    state = {"state_dict": old.state_dict(), "hparams": dict(OLD_RESNET_HPARAMS)}
    back = ResNet3d(**state["hparams"])
    back.load_state_dict(state["state_dict"])  # strict
    assert not is_gaussian(back)
    assert torch.equal(back.eval()(x), old(x))
    sets = torch.rand(2, 7, 4)
    ds = DeepSets(**OLD_DEEPSETS_HPARAMS).eval()
    assert ds.hparams == OLD_DEEPSETS_HPARAMS and ds(sets).shape == (2,)


def test_a_point_head_with_the_same_seed_builds_the_same_weights_as_before():
    torch.manual_seed(5)
    a = ResNet3d(depth=10, width=4, head_width=8)
    torch.manual_seed(5)
    b = ResNet3d(depth=10, width=4, head_width=8, head="point")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


@pytest.mark.parametrize("outputs", [1, 3])
def test_gaussian_heads_give_a_mean_and_a_positive_sigma(outputs):
    res = ResNet3d(depth=10, width=4, head_width=8, outputs=outputs, head="gaussian").eval()
    ds = DeepSets(hidden=8, latent=4, outputs=outputs, head="gaussian").eval()
    shape = (3, 2) if outputs == 1 else (3, outputs, 2)
    for out in (res(_images(3)), ds(torch.rand(3, 5, 4))):
        assert out.shape == shape and out.dtype == torch.float32
        assert bool((out[..., 1] >= SIGMA_FLOOR).all())
    assert res.hparams["head"] == ds.hparams["head"] == "gaussian"
    assert is_gaussian(res) and is_gaussian(ds)


def test_a_gaussian_checkpoint_rebuilds_the_gaussian_network_and_not_a_point_one():
    torch.manual_seed(0)
    net = ResNet3d(depth=10, width=4, head_width=8, head="gaussian").eval()
    back = ResNet3d(**net.hparams)
    back.load_state_dict(net.state_dict())
    x = _images(2)
    assert torch.equal(back.eval()(x), net(x))
    point = {k: v for k, v in net.hparams.items() if k != "head"}
    with pytest.raises(RuntimeError, match="size mismatch"):
        ResNet3d(**point).load_state_dict(net.state_dict())


def test_an_unknown_head_is_refused():
    with pytest.raises(ConfigError, match="point, gaussian"):
        DeepSets(hidden=8, latent=4, head="quantile")
    with pytest.raises(ConfigError, match="point, gaussian"):
        ResNet3d(depth=10, width=4, head_width=8, head="laplace")


# --- estimators ---------------------------------------------------------------------------------------------


def test_estimators_return_widths_only_with_the_gaussian_head(physical_sets):
    sets = physical_sets(5, 40)
    for head in ("point", "gaussian"):
        torch.manual_seed(0)
        res = ResNetEstimator(ResNet3d(depth=10, width=4, head_width=8, head=head), bins=6, events_per_image=40,
                              batch_size=2)
        ds = DeepSetsEstimator(DeepSets(hidden=8, latent=4, head=head), batch_size=2, event_chunk=16)
        for values, widths in (res.predict(sets), res.predict_images(res.images(sets)), ds.predict(sets)):
            assert values.shape == (5,) and values.dtype == np.float64 and np.isfinite(values).all()
            if head == "point":
                assert widths is None
            else:
                assert widths.shape == (5,) and (widths > 0).all()
        # the estimate is the network's mean, batch by batch as in one go
        whole = ds.model.eval()(torch.from_numpy(sets))
        expect = whole if head == "point" else whole[:, 0]
        assert np.allclose(ds.predict(sets)[0], expect.detach().double().numpy(), atol=1e-6)


# --- the losses ---------------------------------------------------------------------------------------------


def test_the_gaussian_nll_is_log_sigma_plus_half_the_squared_pull():
    out = torch.tensor([[0.0, 1.0], [1.0, 0.5], [-1.0, 2.0]])
    y = torch.tensor([1.0, 1.0, 0.0])
    expect = np.mean([math.log(1.0) + 0.5, math.log(0.5) + 0.0, math.log(2.0) + 0.5 * 0.25])
    assert float(make_loss("gaussian_nll")(out, y)) == pytest.approx(expect, rel=1e-6)
    # beta-NLL: the same value weighted by sigma^(2 beta) (beta = 0.5: by sigma)
    per = [0.5, math.log(0.5), math.log(2.0) + 0.125]
    assert float(make_loss("beta_nll")(out, y)) == pytest.approx(np.mean(np.multiply(per, [1.0, 0.5, 2.0])), rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_beta_nll_gradient_in_the_mean_is_the_residual_times_sigma_to_2beta_minus_2(beta):
    mean = torch.tensor([0.3, -0.2], requires_grad=True)
    sigma = torch.tensor([0.5, 2.0], requires_grad=True)
    y = torch.tensor([1.0, 0.0])
    GaussianNLLLoss(beta)(torch.stack([mean, sigma], dim=-1), y).backward()
    r = (y - mean).detach()
    expect = -r * sigma.detach() ** (2 * beta - 2) / 2  # mean over a batch of 2
    assert torch.allclose(mean.grad, expect, atol=1e-6)
    # the sigma gradient vanishes at sigma = |r| whatever beta: the optimum is unchanged
    s = r.abs().clone().requires_grad_(True)
    GaussianNLLLoss(beta)(torch.stack([mean.detach(), s], dim=-1), y).backward()
    assert torch.allclose(s.grad, torch.zeros(2), atol=1e-6)


def test_validation_uses_the_plain_nll_and_the_old_losses_are_unchanged():
    assert make_loss("beta_nll").beta == 0.5
    assert make_loss("beta_nll", validation=True).beta == 0.0
    assert make_loss("gaussian_nll", validation=True).beta == 0.0
    assert isinstance(make_loss("mae"), torch.nn.L1Loss) and isinstance(make_loss("mae", validation=True), torch.nn.L1Loss)
    assert isinstance(make_loss("mse"), torch.nn.MSELoss)
    assert isinstance(make_loss("cross_entropy"), torch.nn.CrossEntropyLoss)
    with pytest.raises(ConfigError, match="loss must be one of"):
        TrainConfig(loss="nll")


def test_train_and_evaluate_loss_take_b_by_2_outputs_against_b_targets():
    x = _images(16)
    y = torch.linspace(-1, 1, 16)
    data = TensorDataset(x, y)
    torch.manual_seed(0)
    net = ResNet3d(depth=10, width=4, head_width=8, head="gaussian", dropout=0.0)
    cfg = TrainConfig(lr=1e-2, batch_size=4, epochs=3, loss="beta_nll", device="cpu")
    hist = train(net, data, data, cfg)
    assert all(math.isfinite(v) for v in hist["train_loss"] + hist["val_loss"])
    with torch.no_grad():
        out = net.eval()(x)
    mean, sigma = out[:, 0], out[:, 1]
    plain = float((torch.log(sigma) + 0.5 * ((y - mean) / sigma) ** 2).mean())
    assert evaluate_loss(net, data, cfg) == pytest.approx(plain, rel=1e-5)  # the plain NLL, not the weighted one


def test_a_gaussian_network_with_a_point_loss_and_a_point_network_with_an_nll_are_refused():
    data = TensorDataset(torch.rand(8, 5, 4), torch.rand(8))
    with pytest.raises(ConfigError, match="gaussian_nll or beta_nll"):
        train(DeepSets(hidden=8, latent=4, head="gaussian"), data, None, TrainConfig(loss="mae", device="cpu"))
    with pytest.raises(ConfigError, match="head='gaussian'"):
        train(DeepSets(hidden=8, latent=4), data, None, TrainConfig(batch_size=4, loss="gaussian_nll", device="cpu"))


def test_loss_for_head_maps_point_losses_to_the_beta_nll_and_refuses_an_nll_on_a_point_head():
    assert loss_for_head("gaussian", "mae") == "beta_nll"
    assert loss_for_head("gaussian", None) == "beta_nll"
    assert loss_for_head("gaussian", "gaussian_nll") == "gaussian_nll"
    assert loss_for_head("point", "mse") == "mse"
    with pytest.raises(ConfigError, match="needs head: gaussian"):
        loss_for_head("point", "beta_nll")
