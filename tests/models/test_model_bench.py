"""The ResNet throughput benchmark runs its code path on a tiny configuration."""

from __future__ import annotations

import pytest

from kernels.errors import ConfigError
from models.bench import resnet_throughput


def test_resnet_throughput_reports_images_per_second_on_a_tiny_config():
    r = resnet_throughput(depth=10, bins=8, batch=2, steps=2, device="cpu", width=8)
    assert r["images_per_s"] > 0 and r["images"] == 4 and r["steps"] == 2
    assert r["device"] == "cpu" and r["amp"] is False  # AMP applies on CUDA only
    assert r["depth"] == 10 and r["bins"] == 8 and r["parameters"] > 0


def test_resnet_throughput_refuses_zero_steps():
    with pytest.raises(ConfigError, match="steps"):
        resnet_throughput(depth=10, bins=8, batch=2, steps=0, device="cpu")
