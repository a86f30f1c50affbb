"""A look into JSON request bodies while they stream in, before anything parses them.

Every text field of a request has a character cap (VROLLOUT_CHARS_PER_TOKEN times its token
limit), checked when the body is parsed. Parsing an 8 MiB body takes tens of milliseconds of
the event loop, though, and holds the whole body and its decoded copy: thirty at once take a
second and hundreds of MiB before the first is refused. `LongText` finds a JSON string longer
than any field allows as the bytes arrive, so such a body is refused a few hundred KB in. It
counts a lower bound of each string's characters (code points, less six per backslash: an
escape spends at most six code units per backslash, `\\ud83d\\ude00` twelve for one character),
so it never refuses a body the parser would accept. Escaped text (`\\u00e9` for each `é`) counts
as nothing here: the parser refuses it, as before. No HTTP here.
"""

from __future__ import annotations

# UTF-8 continuation bytes: deleting them leaves one byte per code point.
CONTINUATION = bytes(range(0x80, 0xC0))


class LongText:
    """Feed it a JSON body chunk by chunk; `feed` says True once a string is over `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inside = False  # within a string
        self.chars = 0  # code points of the current string so far
        self.escapes = 0  # backslashes in it
        self.run = 0  # backslashes just before the current position (an escaped quote?)

    def feed(self, chunk: bytes) -> bool:
        pos = 0
        while pos < len(chunk):
            quote = chunk.find(b'"', pos)
            if not self.inside:
                if quote < 0:
                    return False
                self.inside, self.chars, self.escapes, self.run = True, 0, 0, 0
                pos = quote + 1
                continue
            end = len(chunk) if quote < 0 else quote
            text = chunk[pos:end]
            self.chars += len(text.translate(None, CONTINUATION))
            self.escapes += text.count(b"\\")
            if self.chars - 6 * self.escapes > self.limit:
                return True
            trailing = len(text) - len(text.rstrip(b"\\"))
            self.run = self.run + trailing if trailing == len(text) else trailing
            if quote < 0:
                return False
            if self.run % 2:  # an escaped quote: still inside
                self.chars += 1
                self.run = 0
            else:
                self.inside = False
            pos = quote + 1
        return False
