"""The few exception types rapidun_dist raises on bad input. Messages say what was expected and what was found."""


class RapidUnError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(RapidUnError, ValueError):
    """A config file or override is invalid (unknown key, wrong type, out-of-range value)."""


class DataError(RapidUnError, ValueError):
    """Input data is malformed: bad JSON line, missing field, empty or overlapping packs."""


class StageError(RapidUnError, RuntimeError):
    """A pipeline stage cannot run: its inputs are missing or inconsistent, or training diverged."""
