"""The value grammar shared by flags and YAML: delta C9 grids, q2 windows, column maps.

Each parser takes the text a user typed and returns plain values, or raises
:class:`~kernels.errors.ConfigError` with one line saying what is wrong. The
click layer (:mod:`orchestrator.cli.types`) and the configs
(:mod:`orchestrator.config.run`) both call these, so a value means the same
on the command line and in a YAML file.
"""

from __future__ import annotations

import math

from kernels.errors import ConfigError

__all__ = ["parse_finite", "parse_dc9", "parse_window", "parse_column_map", "parse_counts", "distinct",
           "parse_shift", "parse_coefficients", "parse_truth", "parse_design", "scan_design"]


def parse_finite(text: str, what: str = "value") -> float:
    """A finite float.

    >>> parse_finite(" -1.5 ")
    -1.5
    """
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{what}: {str(text).strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{what}: {str(text).strip()!r} is not a finite number")
    return value


def distinct(values, what: str = "scan points") -> list:
    """``values`` if no two are equal: two identical scan points would make the same events twice.

    >>> distinct([0.0, 1.0])
    [0.0, 1.0]
    >>> distinct([0.0, 1.0, 0.0])
    Traceback (most recent call last):
    ...
    kernels.errors.ConfigError: 0 appears twice (points 0 and 2); the scan points must differ
    """
    first: dict = {}
    for i, v in enumerate(values):
        if v in first:
            raise ConfigError(f"{v:g} appears twice (points {first[v]} and {i}); the {what} must differ")
        first[v] = i
    return list(values)


def parse_dc9(text: str) -> list[float]:
    """Scan points from ``START:STOP:NUM`` (inclusive, like numpy.linspace) or ``A,B,C``.

    >>> parse_dc9("-1:1:5")
    [-1.0, -0.5, 0.0, 0.5, 1.0]
    >>> parse_dc9("-1.5,0")
    [-1.5, 0.0]

    Identical points are refused (``0,0``, ``1:1:3``).
    """
    text = text.strip()
    if not text:
        raise ConfigError("empty value; expected START:STOP:NUM or a comma list")
    if ":" in text:
        fields = text.split(":")
        if len(fields) != 3:
            raise ConfigError(f"{text!r}: expected START:STOP:NUM, e.g. -2:1.1:22")
        start = parse_finite(fields[0], "START")
        stop = parse_finite(fields[1], "STOP")
        try:
            num = int(fields[2])
        except ValueError:
            raise ConfigError(f"{text!r}: NUM must be a whole number of points, got {fields[2].strip()!r}") from None
        if num < 1:
            raise ConfigError(f"{text!r}: NUM must be at least 1, got {num}")
        if num == 1:
            return [start]
        if start == stop:
            raise ConfigError(f"{text!r}: START = STOP makes {num} identical points; the scan points must differ")
        step = (stop - start) / (num - 1)
        return [start + i * step for i in range(num - 1)] + [stop]
    items = text.split(",")
    if any(not item.strip() for item in items):
        raise ConfigError(f"{text!r}: empty value in the comma list")
    return distinct([parse_finite(item, "value") for item in items])


def parse_window(text: str) -> tuple[float, float]:
    """A q2 window ``LO,HI`` in GeV^2.

    >>> parse_window("1.1,6")
    (1.1, 6.0)
    """
    fields = text.split(",")
    if len(fields) != 2:
        raise ConfigError(f"{text!r}: expected LO,HI in GeV^2, e.g. 1.1,6.0")
    return parse_finite(fields[0], "LO"), parse_finite(fields[1], "HI")


def parse_counts(text: str, what: str = "events") -> tuple[int, ...]:
    """Distinct positive integers ``A,B,...`` (numbers of events).

    >>> parse_counts("2000,24_000")
    (2000, 24000)
    >>> parse_counts("2000,1.5")
    Traceback (most recent call last):
    ...
    kernels.errors.ConfigError: '1.5' is not a positive integer number of events
    """
    out = []
    for item in text.split(","):
        item = item.strip()
        try:
            value = int(item)
        except ValueError:
            value = 0
        if value <= 0:
            raise ConfigError(f"{item!r} is not a positive integer number of {what}")
        out.append(value)
    return tuple(distinct(out, f"numbers of {what}"))


def parse_column_map(text: str) -> dict[str, str]:
    """``NAME=COLUMN,...`` (wcscan name = the file's column) as load_events' file -> wcscan map.

    >>> parse_column_map("q2=Q2,cos_theta_mu=ctl")
    {'Q2': 'q2', 'ctl': 'cos_theta_mu'}
    """
    from kernels.event_store import COLUMNS
    from kernels.theory import SHIFT_COLUMNS

    names = (*COLUMNS, *SHIFT_COLUMNS.values())  # the events' columns, and each coefficient's truth column
    mapping: dict[str, str] = {}
    for item in text.split(","):
        name, sep, column = (s.strip() for s in item.partition("="))
        if not sep or not name or not column:
            raise ConfigError(f"{item.strip()!r}: expected NAME=COLUMN, e.g. q2=Q2")
        if name not in names:
            raise ConfigError(f"{name!r} is not a wcscan column (one of {', '.join(names)})")
        if column in mapping:
            raise ConfigError(f"column {column!r} is mapped twice")
        mapping[column] = name
    return mapping


def parse_shift(text: str) -> tuple[str, str]:
    """``NAME=VALUES`` of ``--shift``: a coefficient (``dc10``, ``C10`` or ``C10_bsmumu``) and its values as
    typed (a grid's ``START:STOP:NUM`` or list; a space-filling design's ``LO:HI``), read by :func:`scan_design`.

    >>> parse_shift("dc10=-1:1:5")
    ('dc10', '-1:1:5')
    """
    from kernels.design import shift_column

    name, sep, values = (s.strip() for s in str(text).partition("="))
    if not sep or not name or not values:
        raise ConfigError(f"{str(text).strip()!r}: expected NAME=VALUES, e.g. dc10=-1:1:5")
    return shift_column(name), values


def parse_coefficients(text: str) -> list[str]:
    """Wilson coefficients ``A,B,...`` by any name :func:`kernels.design.shift_column` reads, as shift columns.

    >>> parse_coefficients("C9,C10_bsmumu,dc9p")
    ['dc9', 'dc10', 'dc9p']
    """
    from kernels.design import shift_columns

    items = str(text).split(",")
    if any(not item.strip() for item in items):
        raise ConfigError(f"{text!r}: empty name in the comma list")
    return list(shift_columns(items))


def parse_truth(text: str) -> dict[str, float]:
    """``--truth NAME=VALUE,...``: the true shift of each coefficient (any name :func:`kernels.design.shift_column`
    reads), keyed by shift column.

    >>> parse_truth("C9=-0.8,dc10=0.25")
    {'dc9': -0.8, 'dc10': 0.25}
    """
    from kernels.design import shift_column

    truth: dict[str, float] = {}
    for item in str(text).split(","):
        name, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not name or not value:
            raise ConfigError(f"{item.strip()!r}: expected NAME=VALUE, e.g. dc9=-0.8")
        col = shift_column(name)
        if col in truth:
            raise ConfigError(f"--truth names {col} twice")
        truth[col] = parse_finite(value, f"--truth {name}")
    return truth


def parse_design(text: str) -> tuple[str, int | None]:
    """``grid``, ``sobol:N`` or ``lhs:N`` (``N`` points in the box the ``--shift`` bounds give).

    >>> parse_design("grid"), parse_design("sobol:16")
    (('grid', None), ('sobol', 16))
    """
    kind, sep, count = (s.strip() for s in str(text).strip().partition(":"))
    if kind == "grid" and not sep:
        return "grid", None
    if kind not in ("sobol", "lhs") or not sep:
        raise ConfigError(f"{str(text).strip()!r}: expected grid, sobol:N or lhs:N")
    try:
        n = int(count)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{str(text).strip()!r}: N must be a positive whole number of points, got {count!r}")
    return kind, n


def _bounds(name: str, text: str) -> tuple[float, float]:
    fields = text.split(":")
    if len(fields) != 2:
        raise ConfigError(f"--shift {name}={text}: a space-filling design takes LO:HI bounds, e.g. {name}=-2:1")
    return parse_finite(fields[0], f"--shift {name} LO"), parse_finite(fields[1], f"--shift {name} HI")


def scan_design(shifts, design: str | tuple = "grid", seed: int = 0):
    """The :class:`kernels.design.Design` of ``--shift`` values (``[(name, text), ...]`` or ``NAME=VALUES``
    strings, in order) and ``--design`` (``grid``: the product of the values; ``sobol:N`` / ``lhs:N``: N seeded
    points within LO:HI bounds).

    >>> scan_design(["dc9=-1:0:2", "dc10=0,1"]).rows()
    [[-1.0, 0.0], [-1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]
    """
    from kernels import design as dsg

    pairs = [parse_shift(s) if isinstance(s, str) else (dsg.shift_column(s[0]), str(s[1])) for s in shifts]
    kind, n = parse_design(design) if isinstance(design, str) else design
    seen: dict = {}
    for name, _ in pairs:
        if name in seen:
            raise ConfigError(f"--shift {name} is given twice; each coefficient takes one --shift")
        seen[name] = True
    if kind == "grid":
        axes = {}
        for name, text in pairs:
            try:
                axes[name] = parse_dc9(text)
            except ConfigError as err:
                raise ConfigError(f"--shift {name}: {err}") from None
        return dsg.grid(axes)
    return dsg.space_filling({name: _bounds(name, text) for name, text in pairs}, n, seed, kind)
