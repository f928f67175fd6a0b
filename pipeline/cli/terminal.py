"""Text from data files made safe for one line of a terminal (`mmctr neighbours`, `mmctr results`)."""

from __future__ import annotations

import unicodedata

# Bidirectional embeddings, overrides and isolates: they reorder the text that follows them on the line.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """`text` for one line of a terminal: control characters (a newline, ESC, ...), line and paragraph separators
    and bidi controls are written as Python escapes (\\n, \\x1b, \\u202e), so a title read from a data file can
    neither add lines to the listing nor send the terminal escape sequences; other text, emoji included, is kept."""
    return "".join(c.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in _BIDI_CONTROLS else c for c in text)
