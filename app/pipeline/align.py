"""Two tokenizations of one text, aligned by character offsets (docs/metrics.md, "Teachers with
another tokenizer").

The student's response ids are decoded to text; the teacher tokenizes that text with its own
tokenizer; each side's tokens get the character offset where they end; the offsets both sides
share cut the text into spans: in each, a run of student tokens and a run of teacher tokens that
spell the same characters. Torch-free: works on tokenizers and id lists only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vrollout.errors import BadTrajectory

CONTEXT = 4  # tokens decoded before each new one: leading-space conventions depend on a left neighbour
REPLACEMENT = "\ufffd"  # what a token ending inside a UTF-8 character decodes to


@dataclass
class Span:
    """Characters `start:end` of the response text, spelled by student tokens `student[0]:student[1]`
    and teacher tokens `teacher[0]:teacher[1]` (half-open index ranges)."""

    start: int
    end: int
    student: tuple[int, int]
    teacher: tuple[int, int]
    special: bool  # a special token (e.g. the end of sequence) mapped to its counterpart

    @property
    def differs(self) -> bool:
        """The two tokenizations differ here: more than one token on a side."""
        return self.student[1] - self.student[0] != 1 or self.teacher[1] - self.teacher[0] != 1


@dataclass
class Alignment:
    text: str  # the response text both models read
    student_ids: list[int]
    teacher_ids: list[int]
    spans: list[Span]

    def student_span(self) -> list[int]:
        """The span index of each student token."""
        out = [0] * len(self.student_ids)
        for n, span in enumerate(self.spans):
            out[span.student[0] : span.student[1]] = [n] * (span.student[1] - span.student[0])
        return out


def decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """Ids to text exactly as the tokenizer spells them: special tokens kept, no clean-up of
    spaces (clean-up would make a prefix's text disagree with the whole text's)."""

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    return decode


def char_ends(decode: Callable[[list[int]], str], ids: list[int], text: str) -> list[int | None]:
    """For each token, the offset in `text` where the text of tokens 0..k ends, or None where
    that prefix does not end on a character of `text` (a token that ends inside a UTF-8
    character, whose prefix decodes to a replacement character).

    Incremental: each token is decoded with a few committed tokens before it (so conventions
    such as sentencepiece's dropped leading space cancel out) and checked against `text`; if
    that does not reach the end of `text`, every prefix is decoded whole (quadratic, exact).
    """
    ends: list[int | None] = [None] * len(ids)
    done, anchor = 0, 0  # tokens before `anchor` are committed; text[:done] is theirs
    for k in range(len(ids)):
        ctx = max(0, anchor - CONTEXT)
        before, now = decode(ids[ctx:anchor]), decode(ids[ctx : k + 1])
        if not now.startswith(before):
            continue
        piece = now[len(before) :]
        if text.startswith(piece, done) and (piece or k + 1 == len(ids) or anchor == k):
            done += len(piece)
            ends[k], anchor = done, k + 1
    if done == len(text) and (not ids or ends[-1] == len(text)):
        return ends
    out: list[int | None] = []
    for k in range(len(ids)):
        prefix = decode(ids[: k + 1])
        out.append(len(prefix) if text.startswith(prefix) else None)
    return out


def _cuts(ends: list[int | None], boundaries: list[int]) -> list[int]:
    """For each boundary offset, the number of tokens that end at or before it (the last token
    whose end is exactly there, plus one)."""
    last: dict[int, int] = {}
    for k, end in enumerate(ends):
        if end is not None:
            last[end] = k + 1
    return [last[b] for b in boundaries]


def _text_spans(
    student_ends: list[int | None], teacher_ends: list[int | None], length: int, base: tuple[int, int, int]
) -> list[Span]:
    """The spans of one run of ordinary tokens: cut where both sides' tokens end together."""
    c0, s0, t0 = base
    ns, nt = len(student_ends), len(teacher_ends)
    if length == 0 or ns == 0 or nt == 0:
        return [Span(c0, c0 + length, (s0, s0 + ns), (t0, t0 + nt), False)]
    student_ends = [*student_ends[:-1], length]  # both sides end with the text (checked by the caller)
    teacher_ends = [*teacher_ends[:-1], length]
    shared = sorted({e for e in student_ends if e} & {e for e in teacher_ends if e})
    s_cuts, t_cuts = _cuts(student_ends, shared), _cuts(teacher_ends, shared)
    spans, prev = [], (0, 0, 0)
    for b, sc, tc in zip(shared, s_cuts, t_cuts, strict=True):
        spans.append(Span(c0 + prev[0], c0 + b, (s0 + prev[1], s0 + sc), (t0 + prev[2], t0 + tc), False))
        prev = (b, sc, tc)
    return spans


def _special_counterpart(student: Any, teacher: Any, token_id: int, eos_ids: set[int], position: int) -> int:
    """The teacher id of a student special token: the end of sequence maps to the teacher's,
    another special token to the teacher's token of the same string, if it has one."""
    name = student.convert_ids_to_tokens(token_id)
    if token_id in eos_ids and teacher.eos_token_id is not None:
        return int(teacher.eos_token_id)
    same = teacher.get_vocab().get(name)
    if same is not None and same in set(teacher.all_special_ids):
        return int(same)
    raise BadTrajectory(
        f"response token {position} is the student's special token {name!r}, which has no "
        "counterpart in the teacher's vocabulary: a teacher with another tokenizer can only read "
        "text and the end of sequence",
        field="response",
        index=position,
    )


def align(student: Any, teacher: Any, response_ids: list[int], eos_ids: set[int]) -> Alignment:
    """The teacher's tokenization of the student's response text, and the spans of both.

    Special tokens of the student (`all_special_ids`) are spans of their own, read by the teacher
    as its counterpart (`eos_ids`: the student's end-of-sequence ids, the teacher's end of
    sequence); the ordinary text between them is tokenized by the teacher run by run.
    """
    s_dec, t_dec = decoder(student), decoder(teacher)
    specials = set(student.all_special_ids)
    text, teacher_ids, spans = "", [], []
    k = 0
    while k < len(response_ids):
        if response_ids[k] in specials:
            counterpart = _special_counterpart(student, teacher, response_ids[k], eos_ids, k)
            piece = s_dec([response_ids[k]])
            spans.append(
                Span(
                    len(text),
                    len(text) + len(piece),
                    (k, k + 1),
                    (len(teacher_ids), len(teacher_ids) + 1),
                    True,
                )
            )
            text, k = text + piece, k + 1
            teacher_ids.append(counterpart)
            continue
        stop = k
        while stop < len(response_ids) and response_ids[stop] not in specials:
            stop += 1
        run = response_ids[k:stop]
        run_text = s_dec(run)
        t_run = list(teacher(run_text, add_special_tokens=False)["input_ids"])
        back = t_dec(t_run)
        if back != run_text:
            at = next(
                (i for i, (a, b) in enumerate(zip(back, run_text, strict=False)) if a != b),
                min(len(back), len(run_text)),
            )
            raise BadTrajectory(
                "the teacher's tokenizer does not give back the response text (its tokens spell it "
                f"differently from character {len(text) + at} on), so the two cannot be aligned",
                field="response",
            )
        spans.extend(
            _text_spans(
                char_ends(s_dec, run, run_text),
                char_ends(t_dec, t_run, run_text),
                len(run_text),
                (len(text), k, len(teacher_ids)),
            )
        )
        text, k = text + run_text, stop
        teacher_ids.extend(t_run)
    return Alignment(text, list(response_ids), teacher_ids, spans)


# --- Shared strings: which student and teacher tokens spell the same next piece of text ---


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as the printable character its vocabularies use."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


BYTE_OF = {c: b for b, c in _bytes_to_unicode().items()}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in str(backend.decoder)


def token_keys(tokenizer: Any, size: int) -> list[bytes | str | None]:
    """What each id 0..size-1 spells, comparable across vocabularies: the bytes of an ordinary
    token (byte-level 'Ġ' and sentencepiece '▁' both read as a space, '<0xNN>' as its byte), the
    string itself for a special or added token, None for an id the tokenizer does not name."""
    names = tokenizer.convert_ids_to_tokens(list(range(min(size, len(tokenizer)))))
    added = set(getattr(tokenizer, "get_added_vocab", dict)().keys()) | set(tokenizer.all_special_tokens)
    byte_level = _is_byte_level(tokenizer)
    keys: list[bytes | str | None] = []
    for name in names:
        if name is None:
            keys.append(None)
        elif name in added:
            keys.append(name)
        elif byte_level:
            try:
                keys.append(bytes(BYTE_OF[c] for c in name))
            except KeyError:
                keys.append(name)
        elif len(name) == 6 and name.startswith("<0x") and name.endswith(">"):
            keys.append(bytes([int(name[3:5], 16)]))
        else:
            keys.append(name.replace("\u2581", " ").encode())
    return keys + [None] * (size - len(keys))


def shared_tokens(
    student: list[bytes | str | None], teacher: list[bytes | str | None]
) -> tuple[list[int], list[int]]:
    """Pairs (student id, teacher id) that spell the same thing, as two aligned id lists (the
    first id of each spelling on each side; a spelling either side lacks is unmatched)."""
    first: dict[bytes | str, int] = {}
    for i, key in enumerate(teacher):
        if key is not None and key != b"":
            first.setdefault(key, i)
    s_ids, t_ids, seen = [], [], set()
    for i, key in enumerate(student):
        if key is None or key in seen or key not in first:
            continue
        seen.add(key)
        s_ids.append(i)
        t_ids.append(first[key])
    return s_ids, t_ids
