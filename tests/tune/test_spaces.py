"""Search spaces: every sample builds a model and a valid training config."""

import pytest
from ray.tune.search.variant_generator import generate_variants

from kernels.errors import ConfigError
from tune.spaces import space_for
from tune.trainables import build_model


def _samples(space, n=5):
    out = []
    for _ in range(n):
        out.extend(cfg for _, cfg in generate_variants(space))
    return out


@pytest.mark.parametrize("model", ["resnet3d", "deepsets"])
@pytest.mark.parametrize("tiny", [True, False])
def test_every_sample_of_a_space_builds_its_model(model, tiny):
    for cfg in _samples(space_for(model, tiny)):
        net = build_model(model, cfg)
        assert sum(p.numel() for p in net.parameters()) > 0
        assert cfg["lr"] > 0 and cfg["batch_size"] >= 1


def test_an_unknown_model_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="resnet3d, deepsets"):
        space_for("mlp")
