"""'Did you mean ...?': the nearest valid name for a mistyped key, value or search name."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_match(word: object, choices: Iterable[object]) -> str | None:
    """The choice nearest to `word` when one is near enough to be a typo of it, else None.

    Compared without case: `NSGA2` is a typo of `nsga2` as much as `nsga` is.
    """
    if not isinstance(word, str) or not word:
        return None
    by_lower = {str(c).lower(): str(c) for c in choices}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found and by_lower[found[0]] != word else None


def did_you_mean(word: object, choices: Iterable[object], prefix: str = "", quote: bool = False) -> str:
    """`"; did you mean X?"` to end an error message with, or "" when no choice is near `word`."""
    match = close_match(word, choices)
    if match is None:
        return ""
    shown = f"{prefix}{match}"
    return f"; did you mean {shown!r}?" if quote else f"; did you mean {shown}?"
