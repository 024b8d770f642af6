"""User-facing errors.

Every error a user can cause (bad config, missing file, malformed data) is a `RouterForgeError`
subclass whose message is one line that says what is wrong, where, and how to fix it. The CLI and
the recipes print that line and exit non-zero instead of a traceback.
"""


class RouterForgeError(Exception):
    """An error caused by user input: printed as one line, exit code 2."""

    exit_code = 2


class ConfigError(RouterForgeError):
    """A config file or override is invalid (unknown key, wrong type, out-of-range value)."""


class DataError(RouterForgeError):
    """Input data is missing or unusable as a whole (not a single bad row: those are counted)."""


class StrictModeError(DataError):
    """`--strict` was given and at least one row was malformed."""


class CheckpointError(RouterForgeError):
    """A checkpoint is missing, incomplete, tampered with or does not match what is asked of it."""


class PublishError(RouterForgeError):
    """Publishing was refused or failed (version already published, Hub error after retries, ...)."""
