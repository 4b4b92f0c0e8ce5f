"""Sweeps can choose the Gaussian head: the trial config builds it, its loss is an NLL, its checkpoint rebuilds it."""

import pytest
import torch
from ray import tune
from ray.tune.search.variant_generator import generate_variants

from kernels.errors import ConfigError
from models.heads import is_gaussian
from tune.spaces import space_for
from tune.trainables import CHECKPOINT_FILE, DataSpec, build_model, load_checkpoint, train_config


@pytest.fixture
def spec(tiny_dataset):
    return DataSpec(model="deepsets", dataset=str(tiny_dataset), epochs=2)


@pytest.mark.parametrize("model", ["resnet3d", "deepsets"])
def test_build_model_takes_the_head_from_the_trial_config_and_defaults_to_a_point_head(model):
    assert not is_gaussian(build_model(model, {}))
    assert "head" not in build_model(model, {"head": "point"}).hparams
    assert is_gaussian(build_model(model, {"head": "gaussian"}))


def test_a_gaussian_trial_trains_with_an_nll_whatever_point_loss_the_space_drew(spec):
    assert train_config(spec, {"head": "gaussian", "loss": "mae"}).loss == "beta_nll"
    assert train_config(spec, {"head": "gaussian"}).loss == "beta_nll"
    assert train_config(spec, {"head": "gaussian", "loss": "gaussian_nll"}).loss == "gaussian_nll"
    assert train_config(spec, {"loss": "mse"}).loss == "mse"
    assert train_config(spec, {}).loss == "mae"  # TrainConfig's default, as before
    with pytest.raises(ConfigError, match="needs head: gaussian"):
        train_config(spec, {"loss": "beta_nll"})


@pytest.mark.parametrize("model", ["resnet3d", "deepsets"])
def test_a_gaussian_space_fixes_the_head_for_the_whole_sweep(model):
    assert "head" not in space_for(model, tiny=True)
    for _, cfg in generate_variants(space_for(model, tiny=True, head="gaussian")):
        assert cfg["head"] == "gaussian" and cfg["loss"] == "beta_nll"
        assert is_gaussian(build_model(model, cfg))
    with pytest.raises(ConfigError, match="point or gaussian"):
        space_for(model, head="quantile")


@pytest.mark.parametrize("head", ["point", "gaussian"])
def test_load_checkpoint_rebuilds_the_head(tmp_path, head):
    torch.manual_seed(0)
    net = build_model("deepsets", {"hidden": 8, "head": head})
    torch.save({"state_dict": net.state_dict(), "epoch": 0, "val_loss": 1.0, "model": "deepsets",
                "hparams": net.hparams, "set_size": 5}, tmp_path / CHECKPOINT_FILE)
    back, state = load_checkpoint(tune.Checkpoint.from_directory(tmp_path))
    assert is_gaussian(back) == (head == "gaussian")
    x = torch.rand(2, 5, 4)
    assert torch.equal(back(x), net.eval()(x))
