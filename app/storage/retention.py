"""Retention (VROLLOUT_RETENTION_DAYS, off by default): analyses and finished jobs older than
that are deleted at start-up and then every hour, so that a long-running server's database
does not only grow. Jobs still queued or running keep everything."""

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


async def keep_retention(jobs: Jobs, days: float, every_s: float = EVERY_S) -> None:
    """Never ends by itself: a failed sweep is logged and the next one tries again."""
    while True:
        try:
            analyses, finished = await asyncio.to_thread(purge_older_than, jobs, days)
            if analyses or finished:
                log.info("retention (%g days): deleted %d analyses, %d jobs", days, analyses, finished)
        except (StorageError, sqlite3.Error) as exc:
            error = exc if isinstance(exc, StorageError) else storage_error(exc, "retention")
            log.error("retention: %s", error.message)
        await asyncio.sleep(every_s)
