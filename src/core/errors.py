"""Errors that the command-line entry points report as one line instead of a traceback."""


class TradelabError(Exception):
    """Base class for user-facing errors (bad data, bad configuration)."""


class DataError(TradelabError):
    """A market-data file is missing, malformed or unusable."""


class ConfigError(TradelabError):
    """A configuration value is invalid; the message names the key."""


class NumericalFault(TradelabError):
    """Training produced NaN/inf values too often to continue, or non-finite weights."""
