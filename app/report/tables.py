"""Tables: spreadsheet-safe CSV pieces, a file that hands over what is written (Parquet pieces to
stream), and the rows of the pages' trajectory tables (the job page, /analyses). Shared by the
dataset views, the drift view and the pedagogical comparison."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator
from typing import Any

from vrollout.pipeline.digest import summary_of

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


# The job page's and /analyses' table of trajectories: each summary row (pipeline.digest), plus
# divergences per 100 tokens and a mini strip of the reverse KL along the response.
KL_STRIP_CELLS = 10  # one cell per tenth of the response (the digest's deciles)
# The mini strips' fixed absolute scale, in nats per token: a cell's colour is sqrt(min(KL, MAX)
# / MAX), the same on every row and every page, so two rows compare by eye (never per-page).
KL_STRIP_MAX_NATS = 2.0


def tenth_sizes(tokens: int) -> list[int]:
    """How many tokens fall in each tenth of a response, as `decile_shares` cuts it (token t in
    tenth min(9, 10 t // tokens)): ceil((i + 1) T / 10) - ceil(i T / 10)."""
    edges = [-(-i * tokens // KL_STRIP_CELLS) for i in range(KL_STRIP_CELLS + 1)]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


def kl_strip(digest: dict[str, Any]) -> list[float | None] | None:
    """The mean reverse KL per token (nats) of each tenth of the response, from the digest's
    deciles (their share of the total): absolute, so that it reads on the fixed scale. Null for
    a tenth without tokens (a response under ten tokens); None without a signal (no KL at all)."""
    shares, total, tokens = digest.get("deciles"), digest.get("reverse_kl_total"), digest.get("tokens")
    if not shares or not total or not tokens:
        return None
    # The student's tokens in each tenth of the whole response (a conversation's context steps
    # are in the tenths but not among the tokens); digests before version 9 have only `tokens`.
    sizes = digest.get("decile_tokens") or tenth_sizes(tokens)
    return [share * total / n if n else None for share, n in zip(shares, sizes, strict=True)]


def per_100_tokens(count: int | None, tokens: int | None) -> float | None:
    return None if count is None or not tokens else 100 * count / tokens


def trajectory_row(digest: dict[str, Any]) -> dict[str, Any]:
    """One row of the trajectories table: the summary row, divergences per 100 tokens and the
    mini strip (the top-5% share is the summary's kl_top_5pct)."""
    return {
        **summary_of(digest),
        "divergences_per_100_tokens": per_100_tokens(digest.get("divergences"), digest.get("tokens")),
        "kl_strip": kl_strip(digest),
    }


KL_STRIP_COLOR = (192, 57, 43)  # the KL red of the figures (#c0392b), at the top of the scale
KL_STRIP_EMPTY = "#eef0f3"  # a tenth without tokens


def kl_color(value: float | None, top: float = KL_STRIP_MAX_NATS) -> str:
    """A mini strip cell's colour on the fixed scale: white at 0, the KL red at `top` nats per
    token and above, sqrt in between (small values stay visible). static/job.js does the same."""
    if value is None:
        return KL_STRIP_EMPTY
    t = math.sqrt(min(max(value, 0.0), top) / top)
    return "#" + "".join(f"{round(255 + (c - 255) * t):02x}" for c in KL_STRIP_COLOR)
