"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class EsamError(Exception):
    """A problem with the user's input (config, CLI, data), not a bug in esam."""


class ConfigError(EsamError, ValueError):
    """A config value is wrong: the message names the field and the value."""


class DataError(EsamError):
    """A dataset is missing, corrupt or too small for the requested run."""
