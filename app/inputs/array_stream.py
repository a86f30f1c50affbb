"""A JSON array file (`[ {...}, {...} ]`) read a piece at a time, one item at a time.

`iter_array` yields what `inputs.trajectories.parse_file` gives for the same bytes (the same
numbers, objects and messages), but never holds more than a piece of the file and one item:
an item over VROLLOUT_MAX_LINE_BYTES is scanned to its end by a small state machine (strings,
escapes, brackets) and skipped, never kept whole. A problem of the whole file (invalid JSON,
not UTF-8, data after the closing ']') is a `BadTrajectory` raised where it is met, after the
items before it were yielded. Knows nothing about models or HTTP.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from vrollout.errors import BadTrajectory
from vrollout.inputs.trajectories import LineError, _json_problem, _over

CHUNK = 1 << 18  # bytes read at a time: 256 KiB, a few of them in memory at once
_SPACE = re.compile(r"[ \t\n\r]*")  # what JSON allows between items (as parse_file)
_OUTSIDE = re.compile(r'[^"\[\]{}]*+')  # outside strings: up to the next quote or bracket
_INSIDE = re.compile(r'[^"\\]*+(?:\\.[^"\\]*+)*+', re.S)  # a string's rest: up to its closing quote
_SCALAR = re.compile(r'[^,\[\]{}" \t\n\r]*+')  # a number or literal: up to what cannot be in one


class _Text:
    """The file's text, decoded a piece at a time. `buf` holds it from `mark` (the start of the
    item being read) or else from `pos`; `lines` counts the newlines before `buf`, so that an
    error names the line of the whole file."""

    def __init__(self, f: IO[bytes], chunk: int) -> None:
        self.f, self.chunk = f, chunk
        self.buf, self.pos = "", 0
        self.mark: int | None = None
        self.lines = 0  # newlines before buf
        self.decoded = 0  # bytes decoded so far (after the BOM), and their newlines
        self.decoded_lines = 0
        self.pending = b""  # the start of a character cut by the piece's end
        self.eof = False

    def more(self) -> bool:
        """Drop what is no longer needed and append the next piece; False at the file's end."""
        if self.eof:
            return False
        raw = self.f.read(self.chunk)
        data = self.pending + raw if self.pending else raw
        try:
            text, used = codecs.utf_8_decode(data, "strict", not raw)
        except UnicodeDecodeError as exc:  # as parse_file says it: the byte and line in the file
            byte = self.decoded + exc.start
            line = self.decoded_lines + data.count(b"\n", 0, exc.start) + 1
            raise BadTrajectory(f"the file is not UTF-8 text (byte {byte}, line {line})") from None
        self.pending = data[used:]
        self.decoded += used
        self.decoded_lines += text.count("\n")
        self.eof = not raw
        cut = self.pos if self.mark is None else self.mark
        self.lines += self.buf.count("\n", 0, cut)
        self.buf = self.buf[cut:] + text
        self.pos -= cut
        if self.mark is not None:
            self.mark = 0
        return bool(text) or not self.eof

    def skip_space(self) -> str:
        """Move past JSON whitespace; the next character ('' at the file's end)."""
        while True:
            self.pos = _SPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self.more():
                return self.buf[self.pos : self.pos + 1]

    def invalid(self, exc: Exception) -> BadTrajectory:
        """The decoder's error as parse_file words it, its line counted in the whole file."""
        if isinstance(exc, json.JSONDecodeError):
            return BadTrajectory(f"invalid JSON array: {exc.msg} (line {self.lines + exc.lineno})")
        return BadTrajectory(f"invalid JSON array: {_json_problem(exc)}")


class _Item:
    """Where one item ends, found a piece at a time: inside a string or not, how deep in brackets."""

    def __init__(self, text: _Text) -> None:
        first = text.buf[text.pos]
        self.scalar = first not in '"[{'
        self.in_string = first == '"'
        self.depth = int(first in "[{")
        if not self.scalar:
            text.pos += 1

    def scan(self, text: _Text) -> bool:
        """Move `text.pos` on towards the item's end: True once just after it, False where the
        text in hand runs out first (`pos` then at the end, or at a final backslash)."""
        buf, i, n = text.buf, text.pos, len(text.buf)
        if self.scalar:
            text.pos = _SCALAR.match(buf, i).end()
            return text.pos < n
        while True:
            if self.in_string:
                i = _INSIDE.match(buf, i).end()
                if i >= n or buf[i] == "\\":  # the string, or its last escape, goes on in the next piece
                    text.pos = i
                    return False
                self.in_string = False
                i += 1
                if self.depth == 0:
                    text.pos = i
                    return True
                continue
            i = _OUTSIDE.match(buf, i).end()
            if i >= n:
                text.pos = i
                return False
            c = buf[i]
            i += 1
            if c == '"':
                self.in_string = True
            elif c in "[{":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 0:
                    text.pos = i
                    return True


def iter_array(path: Path, max_line_bytes: int | None, chunk: int = CHUNK) -> Iterator[tuple[int, Any]]:
    """The items of the JSON array in `path` as (number from 1, item), or (number, LineError)
    for an item longer than `max_line_bytes` (in bytes, as written in the file). The file
    must start (after a UTF-8 BOM and whitespace) with '['; `chunk` is the bytes read at a time."""
    with path.open("rb") as f:
        yield from read_array(f, max_line_bytes, chunk)


def read_array(f: IO[bytes], max_line_bytes: int | None, chunk: int = CHUNK) -> Iterator[tuple[int, Any]]:
    """`iter_array` of an open binary file (an upload's bytes in a `BytesIO`)."""
    if f.read(3) != b"\xef\xbb\xbf":
        f.seek(0)
    yield from _items(_Text(f, chunk), max_line_bytes)


def _items(text: _Text, limit: int | None) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    while (start := text.buf.find("[", text.pos)) < 0:
        text.pos = len(text.buf)
        if not text.more():
            raise BadTrajectory("invalid JSON array: no '[' found")
    text.pos = start + 1
    number = 0
    if text.skip_space() == "]":
        text.pos += 1
    else:
        while True:
            number += 1
            yield number, _one(text, decoder, number, limit)
            after = text.skip_space()
            if after == "]":
                text.pos += 1
                break
            if after != ",":
                raise text.invalid(json.JSONDecodeError("expected ',' or ']'", text.buf, text.pos))
            text.pos += 1
            text.skip_space()
    _rest(text)


def _one(text: _Text, decoder: json.JSONDecoder, number: int, limit: int | None) -> Any:
    """The item starting at `text.pos` (not blank), decoded; or its LineError when it is over
    `limit`, found by scanning (it is dropped a piece at a time, never held whole)."""
    text.mark = start = text.pos
    if text.buf[start : start + 1] in ("{", "[", '"'):  # in one piece, most often: no scan needed
        try:  # a closed container or string ends where the decoder says, whatever follows
            value, end = decoder.raw_decode(text.buf, start)
        except (ValueError, RecursionError):
            pass  # cut by the piece's end, or wrong: the scan below finds its end first
        else:
            return _sized(text, value, end, number, limit)
    item = _Item(text) if start < len(text.buf) else None  # None: the file ended
    ended = False
    skipped = 0  # bytes of an item over the limit, already dropped
    while item is not None and not item.scan(text):
        if skipped or (limit is not None and (text.pos - text.mark) * 4 > limit):
            start = 0 if text.mark is None else text.mark
            size = skipped + len(text.buf[start : text.pos].encode())
            if limit is not None and size > limit:  # over: scan on, keeping nothing
                skipped, text.mark = size, None
        if not text.more():
            ended = True
            break
    if skipped:
        if ended:
            raise BadTrajectory(
                f"invalid JSON array: the file ends inside item {number} (line {text.decoded_lines + 1})"
            )
        size = skipped + len(text.buf[: text.pos].encode())
        return LineError(number, _over(size, limit or 0, "trajectory"))
    try:  # the whole item is in hand (or the file ended): the decoder says what parse_file says
        value, end = decoder.raw_decode(text.buf, text.mark or 0)
    except (ValueError, RecursionError) as exc:
        raise text.invalid(exc) from None
    return _sized(text, value, end, number, limit)


def _sized(text: _Text, value: Any, end: int, number: int, limit: int | None) -> Any:
    """The item decoded from `text.mark` to `end`, or its LineError when it is over `limit`."""
    start, text.mark, text.pos = text.mark or 0, None, end
    if limit is not None and (size := len(text.buf[start:end].encode())) > limit:
        return LineError(number, _over(size, limit, "trajectory"))
    return value


def _rest(text: _Text) -> None:
    """After the closing ']': only whitespace, to the file's end (read, not kept, so that a
    file that is not UTF-8 further on is said as parse_file says it)."""
    extra = bool(text.buf[text.pos :].strip())
    text.pos = len(text.buf)
    while text.more():
        extra = extra or bool(text.buf[text.pos :].strip())
        text.pos = len(text.buf)
    if extra:
        raise BadTrajectory("invalid JSON array: extra data after the closing ']'")
