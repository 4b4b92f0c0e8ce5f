"""Reading a job config: which file a name means, and what a validation error says, each in one line.

:func:`config_file` resolves ``--config NAME|FILE`` before anything heavy is
imported (the CLI's ``--config`` type calls it while parsing, so a misspelt
name costs a fraction of a second, not the import of torch): a shipped name,
with the nearest shipped name when it is none; a path that is a directory;
a file that is not there. :func:`validation_message` turns pydantic's first
error into one line, and an unknown field into its name and the nearest valid
one.

>>> from pydantic import BaseModel, ConfigDict, ValidationError
>>> class Scan(BaseModel):
...     model_config = ConfigDict(extra="forbid")
...     events_per_point: int
>>> try:
...     Scan.model_validate({"events_per_point": 1, "evnts_per_point": 2})
... except ValidationError as err:
...     validation_message(err, Scan)
"(top level): unknown field 'evnts_per_point'; did you mean 'events_per_point'?"
"""

from __future__ import annotations

import difflib
import types
import typing
from importlib import resources
from pathlib import Path

from kernels.errors import ConfigError

__all__ = ["RUN_PRESETS", "GLOBALFIT_PRESETS", "shipped", "config_file", "validation_message"]

#: The folders of shipped configs inside ``orchestrator.config``.
RUN_PRESETS = ("presets",)
GLOBALFIT_PRESETS = ("presets", "globalfit")


def presets_dir(where: tuple[str, ...]) -> Path:
    return Path(str(resources.files("orchestrator.config").joinpath(*where)))


def shipped(where: tuple[str, ...]) -> list[str]:
    """The names of the shipped job configs in ``where`` (observable sets are not jobs)."""
    return sorted(p.stem for p in presets_dir(where).glob("*.yaml") if not p.stem.startswith("observables-"))


def config_file(name_or_path, where: tuple[str, ...] = RUN_PRESETS, kind: str = "config") -> Path:
    """The YAML file that ``--config NAME|FILE`` means, or a one-line :class:`ConfigError`.

    >>> config_file("demo").name
    'demo.yaml'
    >>> config_file("dmeo")
    Traceback (most recent call last):
    ...
    kernels.errors.ConfigError: unknown config 'dmeo' (did you mean 'demo'?); shipped: demo, demo-c9c10, demo-ff, det_bkg24k, det_bkg24k-ff, det_res24k, gen-4wc, gen24k, gen24k-c9c10, gen24k-c9c10-ff, gen24k-ff, gen24k-pc, seed-resnet34 (or give a .yaml file)
    """
    path = Path(str(name_or_path)).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in str(name_or_path):
        if path.is_dir():
            raise ConfigError(f"config {path}: is a directory; give a YAML file or a shipped {kind} name")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    names = shipped(where)
    if str(name_or_path) not in names:
        near = difflib.get_close_matches(str(name_or_path), names, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"unknown {kind} {str(name_or_path)!r}{hint}; shipped: {', '.join(names)} "
                          "(or give a .yaml file)")
    return presets_dir(where) / f"{name_or_path}.yaml"


def _models_in(annotation) -> list:
    """The pydantic model classes an annotation can hold (through Optional, unions, lists and dicts)."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, tuple, dict, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _fields_at(model, loc) -> list[str]:
    """The field names valid at ``loc`` (a pydantic error location, without the offending key)."""
    current = [model]
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: the same item model
        current = [m for c in current if part in c.model_fields for m in _models_in(c.model_fields[part].annotation)]
    return sorted({name for c in current for name in c.model_fields})


def validation_message(err, model) -> str:
    """pydantic's first error as ``where: what`` (an unknown field first, with the nearest valid name)."""
    errors = err.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    e = (unknown or errors)[0]
    loc = tuple(e["loc"])
    if unknown:
        where = ".".join(map(str, loc[:-1])) or "(top level)"
        fields = _fields_at(model, loc[:-1])
        near = difflib.get_close_matches(str(loc[-1]), fields, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else (f"; valid here: {', '.join(fields)}" if fields else "")
        return f"{where}: unknown field {str(loc[-1])!r}{hint}"
    where = ".".join(map(str, loc)) or "(top level)"
    return f"{where}: {e['msg'].removeprefix('Value error, ')}"
