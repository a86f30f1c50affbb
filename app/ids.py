"""Identifiers and timestamps of stored analyses, jobs and rollouts."""

from __future__ import annotations

import datetime as dt
import uuid


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
