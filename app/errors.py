"""The core's exceptions. One handler at the edge maps them to the JSON error shape."""

from __future__ import annotations

from typing import Any


class VRError(Exception):
    """Base class: a problem the user can fix, with an HTTP status and optional details."""

    status: int = 400

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadTrajectory(VRError):
    status = 422


class TooLong(VRError):
    status = 413


class ModelMismatch(VRError):
    """Student and teacher cannot be compared (e.g. different vocabularies)."""

    status = 409


class NotFound(VRError):
    status = 404


class ModelBusy(VRError):
    """The model failed for a reason that is not the input's fault (e.g. out of memory)."""

    status = 503


class ModelLoadError(VRError):
    """The configured models could not be loaded (a wrong name or folder, a server that does not
    answer, a missing package): said once, at start-up."""

    status = 503


class ModelOutOfMemory(ModelBusy):
    """Out of memory in the middle of model work: the request is dropped, the server goes on."""


class StorageError(VRError):
    """The database cannot be read or written (read-only, locked, damaged)."""

    status = 503


class StorageFull(StorageError):
    """The disk (or the database's size limit) is full: nothing more can be written."""

    status = 507


class QueueFull(VRError):
    """Too many requests already wait for the model: retry after `retry_after` seconds."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.headers = {"Retry-After": str(retry_after)}


class TooManyStreams(VRError):
    """A job already has as many progress streams as one job may have: retry after
    `retry_after` seconds, or poll the job's state."""

    status = 429

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, retry_after=retry_after)
        self.headers = {"Retry-After": str(retry_after)}


class StreamsFull(TooManyStreams):
    """The server already holds as many progress streams as it serves at once."""

    status = 503


class Cancelled(Exception):
    """Model work stopped because its request was cancelled (the client went away, or a task
    was cancelled). Not a VRError: nothing may mistake it for a problem with the input."""
