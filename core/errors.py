"""Domain errors raised by the core library.

The service maps each class to one HTTP status and one stable code, so every
distinct failure a caller can act on has its own class here.
"""

from __future__ import annotations


class TerdGuardError(Exception):
    """Base class of every error the core library raises on purpose."""


class ModelLoadError(TerdGuardError):
    """A model directory could not be loaded."""


class ModelNotFoundError(ModelLoadError):
    """The model directory or a required file in it does not exist."""


class MissingConfigError(ModelLoadError):
    """A config file that describes the model is missing or is not valid JSON."""


class UnsafeWeightsError(ModelLoadError):
    """The directory offers only pickle-based weights, which are never loaded."""


class UnsupportedModelError(ModelLoadError):
    """The model is of a kind the guard cannot scan yet."""


class DeviceUnavailableError(TerdGuardError):
    """The requested torch device is not present on this machine."""


class ScanFailedError(TerdGuardError):
    """Trigger reversion stopped without a usable result, for example on a NaN loss."""


class InvalidLatentsError(TerdGuardError, ValueError):
    """Caller-supplied initial noise has the wrong shape, dtype or non-finite values."""


class TriggerFileError(TerdGuardError):
    """A stored trigger file is missing, corrupt or belongs to another model."""
