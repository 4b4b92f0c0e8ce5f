"""The shared training loop: early stopping keeps the best weights, seeds reproduce, schedules, checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kernels.errors import ConfigError
from models.training import TrainConfig, TrainingError, evaluate_loss, resolve_device, seed_everything, train


def _line_data(slope: float, n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 2 - 1
    return TensorDataset(x, slope * x[:, 0])


class _Scale(nn.Module):
    """f(x) = w x, starting at w = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.w * x[:, 0]


def test_early_stopping_keeps_the_best_checkpoint_when_validation_loss_rises(tmp_path):
    # Training pulls w from 0 to 2; the validation data want w = 1, so its loss falls, then rises.
    model = _Scale()
    states = []
    calls = []

    def on_epoch(epoch, train_loss, val_loss, lr):
        states.append(copy.deepcopy(model.state_dict()))
        calls.append((epoch, train_loss, val_loss, lr))

    cfg = TrainConfig(lr=0.1, batch_size=16, epochs=100, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                      loss="mse", scheduler="none", patience=3, checkpoint_path=str(tmp_path / "best.pt"))
    hist = train(model, _line_data(2.0), _line_data(1.0, seed=1), cfg, on_epoch=on_epoch)

    val = np.array(hist["val_loss"])
    best = hist["best_epoch"]
    assert 0 < best < len(val) - 1 and best == int(np.argmin(val))
    assert val[-1] > val[best]  # it did rise
    assert hist["stopped_early"] and hist["epochs_run"] == best + 1 + cfg.patience < cfg.epochs
    w = model.w.detach().cpu()
    assert torch.equal(w, states[best]["w"].cpu())  # the model holds the best epoch's weights
    assert not torch.equal(w, states[-1]["w"].cpu())
    saved = torch.load(tmp_path / "best.pt")  # saved from the CPU, so a machine without a GPU loads it
    assert saved["state_dict"]["w"].device.type == "cpu"
    assert saved["epoch"] == best and torch.equal(saved["state_dict"]["w"], states[best]["w"].cpu())
    assert saved["val_loss"] == pytest.approx(val[best])
    assert [c[0] for c in calls] == list(range(hist["epochs_run"]))
    assert [c[2] for c in calls] == hist["val_loss"] and [c[3] for c in calls] == hist["lr"]


def _mlp_run(seed: int) -> tuple[dict, dict]:
    seed_everything(seed)
    net = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1), nn.Flatten(0))
    hist = train(net, _line_data(3.0, n=100), _line_data(3.0, n=40, seed=1),
                 TrainConfig(lr=1e-2, batch_size=8, epochs=4, seed=seed))
    return hist, net.state_dict()


def test_the_same_seed_reproduces_training_exactly():
    (h1, s1), (h2, s2) = _mlp_run(7), _mlp_run(7)
    assert h1["train_loss"] == h2["train_loss"] and h1["val_loss"] == h2["val_loss"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_another_seed_gives_another_run():
    (h1, _), (h2, _) = _mlp_run(7), _mlp_run(8)
    assert h1["train_loss"] != h2["train_loss"]


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle", "plateau", "none"])
def test_every_schedule_trains_and_records_the_lr(scheduler):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 1), nn.Flatten(0))
    cfg = TrainConfig(lr=0.05, batch_size=16, epochs=6, loss="mse", scheduler=scheduler, patience=0, min_lr=1e-4)
    hist = train(net, _line_data(2.0), _line_data(2.0, seed=1), cfg)
    assert len(hist["lr"]) == len(hist["train_loss"]) == 6
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    if scheduler == "cosine":
        assert hist["lr"][-1] == pytest.approx(1e-4)
    elif scheduler == "onecycle":
        assert max(hist["lr"]) > hist["lr"][0] and hist["lr"][-1] < hist["lr"][0]
    elif scheduler == "none":
        assert hist["lr"] == [0.05] * 6
    else:
        assert all(lr <= 0.05 for lr in hist["lr"])


def test_sgd_with_momentum_trains():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 1), nn.Flatten(0))
    hist = train(net, _line_data(2.0), None,
                 TrainConfig(lr=0.05, batch_size=16, epochs=5, optimizer="sgd", momentum=0.9, loss="mae"))
    assert hist["train_loss"][-1] < 0.5 * hist["train_loss"][0]
    assert hist["val_loss"] == hist["train_loss"]  # no validation data: the training loss is monitored


def test_a_nan_loss_stops_training_with_a_clear_error():
    x = torch.rand(16, 1)
    data = TensorDataset(x, torch.full((16,), float("nan")))
    with pytest.raises(TrainingError, match="training loss is nan"):
        train(nn.Sequential(nn.Linear(1, 1), nn.Flatten(0)), data, None, TrainConfig(epochs=2, batch_size=4))


def test_evaluate_loss_is_the_mean_loss_over_the_data():
    net = _Scale()
    data = _line_data(1.0, n=10)
    expected = float(data.tensors[1].abs().mean())  # w = 0: MAE = mean |y|
    assert evaluate_loss(net, data, TrainConfig(loss="mae", eval_batch_size=3)) == pytest.approx(expected)


@pytest.mark.parametrize("bad", [dict(optimizer="adam"), dict(loss="huber"), dict(scheduler="step"), dict(lr=0.0),
                                 dict(batch_size=0), dict(epochs=1.5), dict(patience=-1), dict(amp_dtype="fp8")])
def test_invalid_configs_are_refused(bad):
    with pytest.raises(ConfigError, match="TrainConfig"):
        TrainConfig(**bad)


def test_device_auto_is_cuda_only_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected and resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


def test_config_is_plain_values_for_tracking():
    d = TrainConfig(lr=0.01).to_dict()
    assert d["lr"] == 0.01 and d["optimizer"] == "adamw" and d["loss"] == "mae"
