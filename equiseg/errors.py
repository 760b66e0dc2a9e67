"""Exceptions with messages that name the thing at fault."""


class EquisegError(Exception):
    """Base class for every error equiseg raises on bad input."""


class ConfigError(EquisegError, ValueError):
    """A configuration key or value is invalid (unknown key, wrong type, out of range)."""


class DataError(EquisegError, ValueError):
    """A data file or list is missing, unreadable, malformed or inconsistent."""


class WeightsError(EquisegError, ValueError):
    """A checkpoint or pretrained-weights file does not match the model."""


class TrainingError(EquisegError, RuntimeError):
    """Training cannot go on (a non-finite loss, a checkpoint that cannot be written)."""
