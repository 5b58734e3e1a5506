"""Text that reaches logs, metrics labels, Redis keys and usage rows from a credential.

A JWT claim or a key's owner can hold anything JSON or the database can: lone surrogates
(which no encoder accepts), control characters (which forge log lines and terminal
output), or megabytes. Each is stopped where it enters, so no later component meets it.
"""

from __future__ import annotations

MAX_CHARS = 256  # an e-mail address is at most 254


def is_sane(value: str) -> bool:
    """Printable (no control or format characters, no lone surrogates) and not too long."""
    return len(value) <= MAX_CHARS and value.isprintable()


def sanitised(value: str) -> str:
    """`value` with each unprintable character replaced by U+FFFD, cut to MAX_CHARS."""
    if is_sane(value):
        return value
    return "".join(c if c.isprintable() else "\ufffd" for c in value[:MAX_CHARS])
