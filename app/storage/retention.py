"""Retention (VROLLOUT_RETENTION_DAYS, off by default): analyses and finished jobs older than
that are deleted at start-up and then every hour, so that a long-running server's database
does not only grow. Jobs still queued or running keep everything. Retention or not, each sweep
then compacts the database (`Store.compact`): SQLite keeps the pages of deleted rows (by
retention or by DELETE requests) inside the file until they are given back."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3

from vrollout.errors import StorageError
from vrollout.storage.jobs import Jobs
from vrollout.storage.store import storage_error

log = logging.getLogger(__name__)
EVERY_S = 3600.0


def purge_older_than(jobs: Jobs, days: float) -> tuple[int, int]:
    """Delete what is older than `days`: returns (analyses, jobs) deleted."""
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    return jobs.purge(before.isoformat(timespec="microseconds"))


def sweep(jobs: Jobs, days: float | None) -> tuple[int, int, int]:
    """Retention where `days` is set, then compaction: (analyses, jobs, bytes given back)."""
    analyses, finished = purge_older_than(jobs, days) if days is not None else (0, 0)
    return analyses, finished, jobs.store.compact()


async def keep_retention(jobs: Jobs, days: float | None, every_s: float = EVERY_S) -> None:
    """Never ends by itself: a failed sweep is logged and the next one tries again."""
    while True:
        try:
            analyses, finished, freed = await asyncio.to_thread(sweep, jobs, days)
            if analyses or finished:
                log.info("retention (%g days): deleted %d analyses, %d jobs", days, analyses, finished)
            if freed:
                log.info("compacted the database: %.1f MiB given back", freed / 2**20)
        except (StorageError, sqlite3.Error) as exc:
            error = exc if isinstance(exc, StorageError) else storage_error(exc, "retention")
            log.error("retention: %s", error.message)
        await asyncio.sleep(every_s)
