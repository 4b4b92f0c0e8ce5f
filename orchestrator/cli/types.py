"""click parameter types for the value grammar of :mod:`orchestrator.config.grammar`.

Each type calls the grammar's parser and turns its one-line
:class:`~kernels.errors.ConfigError` into click's usage error (exit 2), as
pyhf's ``EqDelimStringParamType`` does.

>>> DC9.convert("-1:1:3", None, None)
[-1.0, 0.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable

import click

from kernels.errors import ConfigError
from orchestrator.config import grammar
from orchestrator.config.loading import GLOBALFIT_PRESETS, RUN_PRESETS, config_file


class GrammarType(click.ParamType):
    """A click type whose values are parsed by one function of the grammar."""

    def __init__(self, name: str, parse: Callable[[str], object]):
        self.name = name
        self._parse = parse

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except ConfigError as err:
            self.fail(str(err), param, ctx)


DC9 = GrammarType("START:STOP:NUM|A,B,...", grammar.parse_dc9)
WINDOW = GrammarType("LO,HI", grammar.parse_window)
COLUMN_MAP = GrammarType("NAME=COL,...", grammar.parse_column_map)
FINITE = GrammarType("VALUE", grammar.parse_finite)
COUNTS = GrammarType("N,N,...", grammar.parse_counts)
SHIFT = GrammarType("NAME=VALUES", grammar.parse_shift)
COEFFICIENTS = GrammarType("C9,C10,...", grammar.parse_coefficients)
TRUTH = GrammarType("NAME=VALUE,...", grammar.parse_truth)
DESIGN = GrammarType("grid|sobol:N|lhs:N", grammar.parse_design)


def _config(where: tuple[str, ...], kind: str) -> Callable[[str], str]:
    """``--config NAME|FILE`` checked while parsing, before any job module (and torch) is imported."""

    def parse(text: str) -> str:
        config_file(text, where, kind)
        return text

    return parse


RUN_CONFIG = GrammarType("NAME|FILE", _config(RUN_PRESETS, "config"))
GLOBALFIT_CONFIG = GrammarType("NAME|FILE", _config(GLOBALFIT_PRESETS, "globalfit config"))
