"""`vrollout pedagogical --resume`: what a run has done, kept line by line (docs/ray.md).

rollouts.jsonl keeps only the rollouts asked for (`--include`) and comparison.csv and report.html
are written at the end, so neither says which lines a killed run finished. `records.jsonl` in the
output folder does: every line's full record (what comparison.csv and report.html are computed
from), written and flushed as each line comes. `--resume` reads it back (a partly written last
line is cut off), skips its lines, and gives the earlier records to the report again, merged with
the new ones in line order (a line that failed before runs again, and takes its place).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

RECORDS = "records.jsonl"


class Journal:
    """records.jsonl of an output folder; with `resume`, the lines an earlier run finished are in
    `done` and its records are read again by `merged`."""

    def __init__(self, out: Path, resume: bool) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / RECORDS
        self.done: set[int] = set()
        self.kept = 0  # bytes of whole records from the earlier run
        # (line, byte offset) of each of them: a resumed run appends a line that failed before
        # after later ones, so the file is not always in line order
        self.offsets: list[tuple[int, int]] = []
        if resume and self.path.exists():
            self._read_back()
        self.file = self.path.open("r+b" if resume and self.path.exists() else "wb")
        self.file.truncate(self.kept)
        self.file.seek(self.kept)

    def _read_back(self) -> None:
        with self.path.open("rb") as f:
            for raw in f:
                try:
                    line = json.loads(raw)["line"] if raw.endswith(b"\n") else None
                except (ValueError, TypeError, KeyError):
                    line = None
                if not isinstance(line, int):
                    break  # a partial (or foreign) line: it and anything after it are redone
                self.done.add(line)
                self.offsets.append((line, self.kept))
                self.kept += len(raw)

    def earlier(self) -> Iterator[dict[str, Any]]:
        """The earlier run's records in line order, read one at a time."""
        with self.path.open("rb") as f:
            for _, offset in sorted(self.offsets):
                f.seek(offset)
                yield json.loads(f.readline())

    def merged(self, new: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The earlier records and the new ones (each kept as it comes), in line order."""

        def kept() -> Iterator[dict[str, Any]]:
            for record in new:
                self.file.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
                self.file.flush()  # whole records on disk: a killed run resumes after the last one
                yield record

        return heapq.merge(self.earlier(), kept(), key=lambda record: record["line"])

    def close(self) -> None:
        self.file.close()
