"""Referring expressions: the one rule of what counts as one (:func:`expression_problem`) and their
normalisation (:func:`validate_expressions`). Light on imports: the manifest reader and the CLI use it
before any model is loaded."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

__all__ = ["expression_problem", "validate_expressions"]


def expression_problem(text: str) -> str | None:
    """Why the string ``text`` cannot be a referring expression, or None when it can.

    The one rule for expressions: at least one visible character, i.e. a letter, number, punctuation
    mark or symbol (Unicode categories L, N, P, S). Empty strings, whitespace, control characters
    (``"\\x00"``), format characters such as the zero-width space (``"\\u200b"``) and lone combining marks
    are not.
    """
    if any(unicodedata.category(c)[0] in "LNPS" for c in text):
        return None
    return ("is empty or has no visible character (only whitespace, control or zero-width characters): "
            f"{text!r}")


def validate_expressions(expressions: str | Sequence[str]) -> list[str]:
    """Normalise one expression or a sequence of them to a list of stripped strings.

    Raises ``TypeError`` for a non-string and ``ValueError`` for one without a visible character
    (:func:`expression_problem`: empty, whitespace, ``"\\x00"``, ``"\\u200b"``).
    """
    if isinstance(expressions, str):
        expressions = [expressions]
    if not isinstance(expressions, Sequence) or isinstance(expressions, (bytes, bytearray)):
        raise TypeError(
            f"expressions must be a string or a sequence of strings, got {type(expressions).__name__}"
        )
    if len(expressions) == 0:
        raise ValueError("no expression given: expressions is an empty sequence")
    cleaned = []
    for i, text in enumerate(expressions):
        if not isinstance(text, str):
            raise TypeError(f"expression {i} must be a string, got {type(text).__name__}: {text!r}")
        problem = expression_problem(text)
        if problem is not None:
            raise ValueError(f"expression {i} {problem}")
        cleaned.append(" ".join(text.split()))
    return cleaned
