"""The examples in the models' docstrings run (pytest's doctest collection covers only tests/ and kernels/)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["features", "resnet3d", "deepsets", "event_classifier", "data", "training", "estimators", "bench"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"models.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
