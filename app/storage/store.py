"""Stored analyses in one SQLite file (WAL mode): written once, read by id or newest first.

Knows nothing about models or HTTP. Each call opens its own short-lived connection, so the
store is safe to use from the model worker thread and the event loop alike; `with
store.connect() as db:` is one transaction and closes the connection at its end. Beside each
analysis sits its digest (`pipeline.digest.digest`): what dataset views need, so that they never
parse the analyses themselves.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic_core import to_json
from vrollout.errors import NotFound, StorageError, StorageFull
from vrollout.pipeline.digest import digest, is_current

SCHEMA = """
CREATE TABLE IF NOT EXISTS analyses (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    student TEXT NOT NULL,
    teacher TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    summary TEXT NOT NULL,
    preview TEXT NOT NULL,
    data BLOB NOT NULL,
    digest TEXT                   -- JSON, pipeline.digest.digest; NULL in databases made before it
);
CREATE INDEX IF NOT EXISTS analyses_created ON analyses (created_at DESC);
"""
# SQLite's integer range: an OFFSET beyond it is an overflow, not an empty page.
SQLITE_MAX_INT = 2**63 - 1


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


class ClosingConnection(sqlite3.Connection):
    """`with store.connect() as db:` commits (or rolls back on an error) and then closes.

    sqlite3's own connection only ends the transaction there; the connection, with its file
    descriptors for the database and its WAL, lived on until the cyclic garbage collector
    found it, so a flood of requests ran the process out of descriptors."""

    def __exit__(self, *exc: Any) -> Any:
        try:
            return super().__exit__(*exc)
        finally:
            self.close()


def migrate(db: sqlite3.Connection) -> None:
    """Bring a database made by an older version up to this schema (digests: added empty, and
    filled in when a dataset view first needs them, `Store.digest_of`)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(analyses)")}
    if "digest" not in columns:
        try:
            db.execute("ALTER TABLE analyses ADD COLUMN digest TEXT")
        except sqlite3.OperationalError as exc:  # another process migrated it meanwhile
            if "duplicate column" not in str(exc):
                raise


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.connect() as db:
                # Before the first table: a new database can then give deleted rows' pages back
                # (`compact`); an older one is converted by its first compaction.
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                migrate(db)
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
        """A new connection; `with store.connect() as db:` is one transaction, then it closes.
        Never hold one across a `yield` or an `await`: open, read a chunk, close."""
        return sqlite3.connect(self.path, timeout=30, factory=ClosingConnection)

    def compact(self) -> int:
        """Give the pages of deleted rows back to the file system (SQLite only reuses them):
        the bytes they held. An incremental vacuum; a database made before auto_vacuum was set
        gets one full VACUUM instead, which converts it. Then the WAL is checkpointed, so the
        files shrink now. executescript: it steps a pragma to the end, execute() steps it once."""
        with self.connect() as db:
            mode, pages, size = (
                db.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("auto_vacuum", "freelist_count", "page_size")
            )
            if not pages:
                return 0
            if mode == 2:  # INCREMENTAL
                db.executescript("PRAGMA incremental_vacuum;")
            else:
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                db.executescript("VACUUM;")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return pages * size

    def save(self, analysis: dict[str, Any]) -> None:
        try:
            with self.connect() as db:
                self.insert(db, analysis)
        except sqlite3.Error as exc:
            raise storage_error(exc, "could not store the analysis") from None

    @staticmethod
    def insert(db: sqlite3.Connection, analysis: dict[str, Any]) -> None:
        """Insert inside the caller's transaction (a job marks its line done in the same one)."""
        # Encoded as the routes serve it (NaN kept, as json.loads reads it): what cannot be served
        # back is refused here, before anything is stored.
        blob = zlib.compress(to_json(analysis, inf_nan_mode="constants"), 6)
        row = (
            analysis["id"],
            analysis["created_at"],
            analysis["student"]["model"],
            analysis["teacher"]["model"],
            analysis["summary"]["tokens"],
            json.dumps(analysis["summary"]),
            preview_of(analysis),
            blob,
            json.dumps(digest(analysis)),
        )
        db.execute(
            "INSERT INTO analyses (id, created_at, student, teacher, tokens, summary, preview, data, digest) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )

    def get(self, analysis_id: str) -> dict[str, Any]:
        with self.connect() as db:
            row = db.execute("SELECT data FROM analyses WHERE id = ?", (analysis_id,)).fetchone()
        if row is None:
            raise NotFound(f"no stored analysis with id {analysis_id!r}")
        return json.loads(zlib.decompress(row[0]))

    def get_many(self, ids: list[str]) -> list[dict[str, Any]]:
        """Analyses in the order of `ids` (missing ones are skipped). All in memory at once:
        for many long analyses, iterate `each(ids)` instead."""
        return list(self.each(ids))

    def each(self, ids: list[str], per_query: int = 8) -> Iterator[dict[str, Any]]:
        """Analyses in the order of `ids`, one parsed at a time (missing ones are skipped). No
        connection stays open between them, so a consumer that stops early leaks nothing."""
        for start in range(0, len(ids), per_query):
            part = ids[start : start + per_query]
            marks = ",".join("?" * len(part))
            with self.connect() as db:
                blobs = dict(db.execute(f"SELECT id, data FROM analyses WHERE id IN ({marks})", part))
            for aid in part:
                if aid in blobs:
                    yield json.loads(zlib.decompress(blobs.pop(aid)))

    def digest_of(self, analysis_id: str) -> dict[str, Any] | None:
        """The stored digest of an analysis, computed and stored first if it has none or an
        older version's (an analysis saved before digests, or before their newest keys, existed).
        None: no such analysis (any more)."""
        with self.connect() as db:
            row = db.execute("SELECT digest, data FROM analyses WHERE id = ?", (analysis_id,)).fetchone()
        if row is None:
            return None
        if row[0] is not None and is_current(stored := json.loads(row[0])):
            return stored
        made = digest(json.loads(zlib.decompress(row[1])))
        with self.connect() as db:
            db.execute("UPDATE analyses SET digest = ? WHERE id = ?", (json.dumps(made), analysis_id))
        return made

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
