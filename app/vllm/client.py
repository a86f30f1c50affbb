"""HTTP client for vLLM replicas: bounded concurrency, retries with backoff, fail-over.

A `ReplicaPool` holds the servers of one role (student or teacher). Every request goes to the
healthy replica with the fewest requests in flight; a transient failure (connection refused or
reset, a timeout, a 5xx) marks that replica down for a while (doubling, capped) and the request
moves to another one after a backoff, so a replica that goes away mid-job loses no work.
A 4xx is the request's own fault and is not retried. Knows nothing about metrics or storage.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
from vrollout.errors import BadTrajectory, ModelBusy

log = logging.getLogger(__name__)

MAX_DOWN_S = 30.0  # longest a failing replica is left alone before it is tried again
EVENTS_KEPT = 200


class ReplicasUnavailable(ModelBusy):
    """Every replica of a role failed for longer than the retries allow."""


@dataclass
class Replica:
    url: str
    in_flight: int = 0
    requests: int = 0
    errors: int = 0
    failures_in_a_row: int = 0
    down_until: float = 0.0
    last_error: str | None = None

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": now >= self.down_until,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "errors": self.errors,
            "last_error": self.last_error,
        }


@dataclass
class ReplicaEvent:
    """One transient failure, as the job page shows it."""

    at: float  # time.time()
    role: str
    url: str
    error: str
    moved: bool  # the request went on to be retried (on this or another replica)

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "role": self.role, "url": self.url, "error": self.error, "retried": self.moved}


@dataclass
class ReplicaPool:
    """The replicas of one role. Thread-safe: many threads may call `post` at once."""

    role: str
    urls: list[str]
    concurrency: int = 8  # requests in flight per replica
    retries: int = 6  # further attempts after the first, across replicas
    backoff_s: float = 0.5  # first wait between attempts; doubles, with jitter
    timeout_s: float = 300.0
    replicas: list[Replica] = field(init=False)
    events: deque[ReplicaEvent] = field(init=False)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError(f"no {self.role} URL given")
        self.replicas = [Replica(u.rstrip("/")) for u in self.urls]
        self.events = deque(maxlen=EVENTS_KEPT)
        self._lock = threading.Condition()
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=self.concurrency * len(self.replicas) + 4),
        )

    def close(self) -> None:
        self._client.close()

    def _acquire(self, avoid: Replica | None) -> Replica:
        """The healthy replica with the fewest requests in flight (waits while all are full).
        When every replica is down, the one that comes back soonest."""
        with self._lock:
            while True:
                now = time.monotonic()
                healthy = [r for r in self.replicas if now >= r.down_until] or [
                    min(self.replicas, key=lambda r: r.down_until)
                ]
                if avoid is not None and len(healthy) > 1:
                    healthy = [r for r in healthy if r is not avoid]
                free = [r for r in healthy if r.in_flight < self.concurrency]
                if free:
                    replica = min(free, key=lambda r: (r.in_flight, r.requests))
                    replica.in_flight += 1
                    replica.requests += 1
                    return replica
                self._lock.wait(timeout=1.0)

    def _release(self, replica: Replica, error: str | None) -> None:
        with self._lock:
            replica.in_flight -= 1
            if error is None:
                replica.failures_in_a_row = 0
            else:
                replica.errors += 1
                replica.failures_in_a_row += 1
                replica.last_error = error
                down = min(MAX_DOWN_S, 1.0 * 2 ** (replica.failures_in_a_row - 1))
                replica.down_until = time.monotonic() + down
            self._lock.notify_all()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` as JSON to `path` on some replica; the decoded JSON answer."""
        wait = self.backoff_s
        avoid: Replica | None = None
        for attempt in range(self.retries + 1):
            replica = self._acquire(avoid)
            error = None
            try:
                response = self._client.post(replica.url + path, json=body)
                if response.status_code < 500:
                    if response.status_code >= 400:
                        raise BadTrajectory(
                            f"the {self.role} server refused the request "
                            f"({response.status_code}): {_message(response)}"
                        )
                    return response.json()
                error = f"HTTP {response.status_code}: {_message(response)}"
            except httpx.TransportError as exc:  # refused, reset, timed out, protocol errors
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            finally:
                self._release(replica, error)
            last = attempt == self.retries
            self.events.append(ReplicaEvent(time.time(), self.role, replica.url, error, not last))
            log.warning(
                "%s replica %s failed (%s)%s", self.role, replica.url, error, "" if last else "; retrying"
            )
            avoid = replica
            if not last:
                time.sleep(wait * (0.5 + random.random()))
                wait = min(wait * 2, MAX_DOWN_S)
        raise ReplicasUnavailable(
            f"no {self.role} replica answered after {self.retries + 1} attempts; last error: {error}"
        )

    def get(self, path: str) -> dict[str, Any]:
        """GET from the first replica that answers (start-up checks)."""
        errors = []
        for replica in self.replicas:
            try:
                response = self._client.get(replica.url + path)
                response.raise_for_status()
                return response.json()
            except httpx.HTTPError as exc:
                errors.append(f"{replica.url}: {exc}")
        raise ReplicasUnavailable(f"no {self.role} replica answered {path}: " + "; ".join(errors))

    def describe(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            return [{"role": self.role, **r.describe(now)} for r in self.replicas]


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        error = body.get("error", body.get("message", body))
        if isinstance(error, dict):
            error = error.get("message", error)
        return str(error)[:300]
    return str(body)[:300]
