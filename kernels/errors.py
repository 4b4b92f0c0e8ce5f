"""Exceptions. Every message is one line that says what is wrong and where."""


class WcscanError(Exception):
    """Base class. ``str(err)`` is a one-line message fit for the terminal."""


class ConfigError(WcscanError, ValueError):
    """A user-supplied setting is invalid (names the setting and the value)."""


class TheoryError(ConfigError):
    """An unknown Wilson coefficient, or a q2 window the theory cannot model."""


class DatasetError(WcscanError):
    """A dataset is missing, incomplete, or holds invalid events."""


class ServiceError(WcscanError):
    """An outside service (an MLflow server, a Ray cluster, the output storage) is unusable: names it and why."""
