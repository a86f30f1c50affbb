"""Tables written out: spreadsheet-safe CSV pieces, and a file that hands over what is written
(Parquet pieces to stream). Shared by the dataset views, the drift view and the pedagogical
comparison."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

# Spreadsheet tools run a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula gets a leading quote, as those
    tools expect; numbers (-0.5) stay numbers."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def csv_chunks(rows: Iterable[dict[str, Any]], columns: list[str], chunk_rows: int = 500) -> Iterator[str]:
    """Rows as CSV under `columns`, a few hundred rows per piece, every cell formula-safe."""
    out = io.StringIO()
    # RFC 4180 line ends: with them the writer also quotes a cell that holds a lone CR.
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    for n, row in enumerate(rows, 1):
        writer.writerow({k: csv_cell(row[k]) for k in columns})
        if n % chunk_rows == 0:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()


class Pieces(io.RawIOBase):
    """A write-only file that keeps what is written until it is taken: Parquet pieces to send."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        piece = bytes(data)
        self.pieces.append(piece)
        self.position += len(piece)
        return len(piece)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        data, self.pieces = b"".join(self.pieces), []
        return data
