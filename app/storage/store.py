"""Stored analyses in one SQLite file (WAL mode): written once, read by id or newest first.

Knows nothing about models or HTTP. Each call opens its own short-lived connection, so the
store is safe to use from the model worker thread and the event loop alike.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path
from typing import Any

from vrollout.core.errors import NotFound, StorageError, StorageFull

SCHEMA = """
CREATE TABLE IF NOT EXISTS analyses (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    student TEXT NOT NULL,
    teacher TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    summary TEXT NOT NULL,
    preview TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS analyses_created ON analyses (created_at DESC);
"""


def storage_error(exc: sqlite3.Error, doing: str) -> StorageError:
    """A SQLite failure as the error a user can act on (the transaction was rolled back, so
    everything stored before is still there)."""
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc)
    if name == "SQLITE_FULL" or "is full" in text:
        return StorageFull(
            f"{doing}: the disk holding the database is full ({text}); free some space and retry"
        )
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return StorageError(f"{doing}: the database is read-only ({text}); make its file and folder writable")
    if name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in text:
        return StorageError(f"{doing}: the database is busy ({text}); retry")
    return StorageError(f"{doing}: {text}")


def preview_of(analysis: dict[str, Any], limit: int = 120) -> str:
    prompt = analysis.get("trajectory", {}).get("prompt") or []
    text = prompt[-1]["content"] if prompt else analysis["student"]["context_text"]
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            if "malformed" not in str(exc) and "not a database" not in str(exc):
                raise storage_error(exc, f"cannot open the database {self.path}") from None
            raise StorageError(
                f"cannot open the database {self.path}: {exc}. It is damaged: move it aside (or restore "
                "a backup) and start again; a new database is created where none exists."
            ) from None
        except OSError as exc:
            raise StorageError(f"cannot create the database folder for {self.path}: {exc}") from None

    def connect(self) -> sqlite3.Connection:
        """A new connection; `with store.connect() as db:` is one transaction."""
        return sqlite3.connect(self.path, timeout=30)

    def save(self, analysis: dict[str, Any]) -> None:
        try:
            with self.connect() as db:
                self.insert(db, analysis)
        except sqlite3.Error as exc:
            raise storage_error(exc, "could not store the analysis") from None

    @staticmethod
    def insert(db: sqlite3.Connection, analysis: dict[str, Any]) -> None:
        """Insert inside the caller's transaction (a job marks its line done in the same one)."""
        blob = zlib.compress(json.dumps(analysis, separators=(",", ":")).encode(), 6)
        row = (
            analysis["id"],
            analysis["created_at"],
            analysis["student"]["model"],
            analysis["teacher"]["model"],
            analysis["summary"]["tokens"],
            json.dumps(analysis["summary"]),
            preview_of(analysis),
            blob,
        )
        db.execute("INSERT INTO analyses VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

    def get(self, analysis_id: str) -> dict[str, Any]:
        with self.connect() as db:
            row = db.execute("SELECT data FROM analyses WHERE id = ?", (analysis_id,)).fetchone()
        if row is None:
            raise NotFound(f"no stored analysis with id {analysis_id!r}")
        return json.loads(zlib.decompress(row[0]))

    def get_many(self, ids: list[str]) -> list[dict[str, Any]]:
        """Analyses in the order of `ids` (missing ones are skipped)."""
        found: dict[str, dict[str, Any]] = {}
        with self.connect() as db:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                for aid, data in db.execute(f"SELECT id, data FROM analyses WHERE id IN ({marks})", part):
                    found[aid] = json.loads(zlib.decompress(data))
        return [found[i] for i in ids if i in found]

    def list(self, limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Newest first: (items without steps, total count)."""
        with self.connect() as db:
            total = db.execute("SELECT COUNT(*) FROM analyses").fetchone()[0]
            rows = db.execute(
                "SELECT id, created_at, student, teacher, tokens, summary, preview FROM analyses "
                "ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        items = [
            {
                "id": r[0],
                "created_at": r[1],
                "student": r[2],
                "teacher": r[3],
                "tokens": r[4],
                "summary": json.loads(r[5]),
                "preview": r[6],
            }
            for r in rows
        ]
        return items, total
