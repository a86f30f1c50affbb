"""What a FILE argument names: one source, or many read as one (docs/formats.md, "Several files").

`vrollout analyze|localize|pedagogical FILE...` takes a file, a `datasets` save_to_disk folder,
hf://datasets/ORG/NAME, a folder of JSONL, JSON or Parquet files (verl's `trainer.rollout_data_dir`:
`1.jsonl`, `2.jsonl`, ...), a glob (`'dumps/*.jsonl'`) or several of these. `Sources` reads them
in a stable order (a folder's and a glob's files sorted with their numbers as numbers: `2.jsonl`
before `10.jsonl`; paths given in the order given) and numbers the lines of all of them as one
file: a file's lines follow the last line of the file before it, so `job.line`, `--resume` and
`--shard` work as for one file, and `where(number)` says `FILE:LINE` of the file it came from.
"""

from __future__ import annotations

import bisect
import glob
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vrollout.errors import BadTrajectory, VRError
from vrollout.inputs.sources import PARQUET_MAGIC, Row, check_preset, iter_rows, parse_mapping

if TYPE_CHECKING:
    from vrollout.config import Settings

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
DATASETS_MARKERS = ("state.json", "dataset_dict.json")  # what datasets' save_to_disk writes
GLOB_CHARS = re.compile(r"[*?\[]")


def natural_key(path: str) -> list[Any]:
    """Sort key with each run of digits as a number: `step2` before `step10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def is_datasets_folder(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in DATASETS_MARKERS)


def expand(given: str | os.PathLike[str]) -> list[str]:
    """The sources one FILE argument names: itself (a file, a datasets folder, hf://), a folder's
    data files, or a glob's matches; each folder's and glob's in natural order."""
    text = os.fspath(given)
    if text.startswith("hf://"):
        return [text]
    path = Path(text)
    if path.is_dir():
        if is_datasets_folder(path):
            return [text]
        files = [str(p) for p in path.iterdir() if p.is_file() and p.name.endswith(DATA_SUFFIXES)]
        if not files:
            raise BadTrajectory(
                f"{text}: no .jsonl, .json or .parquet file in it, and not a folder written by "
                "datasets' save_to_disk (no state.json or dataset_dict.json in it)"
            )
        return sorted(files, key=natural_key)
    if not path.exists() and GLOB_CHARS.search(text):
        found = [p for p in glob.glob(text, recursive=True) if Path(p).is_file()]
        if not found:
            raise BadTrajectory(f"{text}: no file matches")
        return sorted(found, key=natural_key)
    return [text]  # a file (a missing one: its OSError when read)


class Sources:
    """The lines of every source that the FILE arguments name, numbered as one file's.

    `rows()` reads them in order; `where(number)` is the line's `FILE:LINE` (with one source,
    exactly `GIVEN:NUMBER`, as before). `part(i, offset)` reads the i-th source alone, its lines
    numbered after `offset` (a cluster reads each file in its own task, `offsets()` first)."""

    def __init__(
        self,
        given: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        settings: Settings,
        *,
        split: str | None = None,
        mapping: str | Mapping[str, str] | None = None,
        preset: str | None = None,
    ) -> None:
        self.given = (
            [os.fspath(given)] if isinstance(given, str | os.PathLike) else [os.fspath(g) for g in given]
        )
        if not self.given:
            raise BadTrajectory("no input file given")
        parse_mapping(mapping)  # the options are checked before anything is read
        check_preset(preset)
        self.settings, self.split, self.mapping, self.preset = settings, split, mapping, preset
        self.paths = [path for text in self.given for path in expand(text)]
        self.several = len(self.paths) > 1 or self.paths != self.given
        self.starts: list[int] = []  # the line number each source's lines follow, as read
        self.read: list[str] = []  # the sources those are of

    @property
    def label(self) -> str:
        """How the sources are named in messages: the argument, or the arguments joined."""
        return self.given[0] if len(self.given) == 1 else " ".join(self.given)

    @property
    def name(self) -> str:
        """The report's name: the file's (or folder's) name, with a count of several files."""
        first = Path(self.given[0]).name or self.given[0]
        if not self.several:
            return first
        return f"{first if len(self.given) == 1 else first + ' ...'} ({len(self.paths)} files)"

    def rows(self) -> Iterator[Row]:
        """Every source's rows in order, numbered as one file's."""
        self.starts, self.read = [], []
        offset = 0
        for index in range(len(self.paths)):
            last = offset
            for number, row in self.part(index, offset):
                last = number
                yield number, row
            offset = last

    def part(self, index: int, offset: int) -> Iterator[Row]:
        """The rows of source `index` alone, numbered after `offset`; a source that cannot be
        read at all raises its error, naming the file when there are several."""
        path = self.paths[index]
        self.starts.append(offset)
        self.read.append(path)
        if self.several and _blank(path):
            return  # an empty step file of a run's folder holds no lines
        try:
            rows = iter_rows(
                path, name=Path(path).name, settings=self.settings, split=self.split,
                mapping=self.mapping, preset=self.preset,
            )  # fmt: skip
            for number, row in rows:
                if offset:
                    row = _renumbered(row, offset + number)
                yield offset + number, row
        except VRError as exc:
            if self.several and not exc.message.startswith(path):
                exc.message = f"{path}: {exc.message}"
                exc.args = (exc.message,)
            raise

    def offsets(self) -> list[int]:
        """Where each source's lines start, counted without decoding them (JSONL: its last line
        with text; Parquet: the rows its footer gives; others: read through): what `rows()`
        would number them from."""
        out, offset = [], 0
        for index, path in enumerate(self.paths):
            out.append(offset)
            if index < len(self.paths) - 1:
                offset += _count(path, lambda i=index: self.part(i, 0)) if not _blank(path) else 0
        self.starts, self.read = list(out), list(self.paths)
        return out

    def where(self, number: int) -> str:
        """`FILE:LINE` of line `number`."""
        if not self.several:
            return f"{self.given[0]}:{number}"
        at = bisect.bisect_left(self.starts, number) - 1
        if at < 0:
            return f"{self.label}:{number}"
        return f"{self.read[at]}:{number - self.starts[at]}"


def _renumbered(row: Any, number: int) -> Any:
    """A row's LineError carries its number: the file's own line becomes the run's."""
    from vrollout.inputs.trajectories import LineError

    if isinstance(row, LineError):
        return LineError(number, row.error)
    return row


def _blank(path: str) -> bool:
    """A file with nothing but white space (and a BOM) in it."""
    try:
        if os.path.getsize(path) > 1 << 16:
            return False
        return not Path(path).read_bytes().removeprefix(b"\xef\xbb\xbf").strip()
    except OSError:
        return False  # reading it says what is wrong


def _count(path: str, read: Any) -> int:
    """The number of the last line `iter_rows` gives for `path`, counted cheaply where it can be."""
    if path.startswith("hf://") or Path(path).is_dir():
        return max((n for n, _ in read()), default=0)
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith(PARQUET_MAGIC):
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    first = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if first.startswith((b"[", b"{")) and not _one_object_per_line(head):
        return max((n for n, _ in read()), default=0)  # a JSON array or a logtree trace
    last, number = 0, 0
    with open(path, "rb") as f:
        for raw in f:  # a JSONL file's lines: the last one with text is its last row's number
            number += 1
            if raw.strip():
                last = number
    return last


def _one_object_per_line(head: bytes) -> bool:
    """JSONL rather than one JSON document: its first line is a whole object."""
    import json

    line = head.removeprefix(b"\xef\xbb\xbf").lstrip().split(b"\n", 1)[0]
    try:
        return isinstance(json.loads(line), dict) and b"\n" in head
    except (ValueError, RecursionError):  # not JSON, or nested past what json.loads follows
        return False  # the file is read through to count it
