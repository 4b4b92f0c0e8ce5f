"""click parameter types for the value grammar of :mod:`orchestrator.config.grammar`.

Each type calls the grammar's parser and turns its one-line
:class:`~kernels.errors.ConfigError` into click's usage error (exit 2), as
pyhf's ``EqDelimStringParamType`` does.
"""

from __future__ import annotations

import click

from kernels.errors import ConfigError
from orchestrator.config import grammar


class _Grammar(click.ParamType):
    parse = staticmethod(lambda text: text)

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return type(self).parse(value)
        except ConfigError as err:
            self.fail(str(err), param, ctx)


class Dc9Grid(_Grammar):
    """``START:STOP:NUM`` (inclusive) or ``A,B,...``."""

    name = "START:STOP:NUM|A,B,..."
    parse = staticmethod(grammar.parse_dc9)


class Window(_Grammar):
    """A q2 window ``LO,HI`` in GeV^2."""

    name = "LO,HI"
    parse = staticmethod(grammar.parse_window)


class ColumnMap(_Grammar):
    """``NAME=COLUMN,...``."""

    name = "NAME=COL,..."
    parse = staticmethod(grammar.parse_column_map)


class Finite(_Grammar):
    """A finite number."""

    name = "VALUE"
    parse = staticmethod(grammar.parse_finite)


DC9 = Dc9Grid()
WINDOW = Window()
COLUMN_MAP = ColumnMap()
FINITE = Finite()
