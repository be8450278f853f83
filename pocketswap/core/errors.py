"""Typed errors. The CLI prints any `PocketswapError` as one readable line and exits non-zero."""


class PocketswapError(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class ImageReadError(PocketswapError):
    """A file is missing, unreadable, corrupt, not an image or too small."""


class NoFaceError(PocketswapError):
    """No face was found where one was required."""


class ModelSignatureError(PocketswapError):
    """A user-supplied model does not have the inputs/outputs an adapter expects."""


class ConfigError(PocketswapError):
    """A configuration value is missing or invalid; the message names the field."""


class CheckpointError(PocketswapError):
    """A checkpoint is missing, incomplete or does not match the requested configuration."""


class OutputError(PocketswapError):
    """An output path cannot be written (read-only folder, a folder where a file goes, a file where a
    folder goes, an extension the writer does not know)."""
