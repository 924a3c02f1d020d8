"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class EsamError(Exception):
    """A problem with the user's input (config, CLI, data), not a bug in esam."""


class ConfigError(EsamError, ValueError):
    """A config value is wrong: the message names the field and the value."""


class DataError(EsamError):
    """A dataset is missing, corrupt or too small for the requested run."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to `limit`; its type's name when the message is
    empty (an exception raised with no message has no first line to index)."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
