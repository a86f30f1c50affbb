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

from .errors import NotFound, VRError

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


class StorageError(VRError):
    status = 507


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
            raise StorageError(f"cannot open the database {self.path}: {exc}") from None
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
            raise StorageError(f"could not store the analysis: {exc}") from None

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
