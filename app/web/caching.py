"""What travels over the wire: gzip for text, and how long a browser may keep what it got.

- Gzip (Starlette's middleware) for HTML, JSON, CSS, JavaScript and CSV past `GZIP_MIN_BYTES`:
  an analysis page is about 2.3 KB of HTML per token and shrinks about 5.7 times. Event streams
  (a job's progress) are never compressed: the compressor would hold their small events back.
  Parquet is compressed already.
- Cache lifetimes: the vendored assets (plotly.js, Swagger UI) carry their version in their file
  name (static/vendor/plotly-basic-4.1.1.min.js), so a new version is a new URL: they are kept a
  year and never revalidated. The app's own scripts and styles change with the app under the
  same name: `no-cache` (the browser asks again and gets a 304 while its ETag holds). Pages and
  JSON answers are rendered from the database per request: `no-cache` as well, unless a route
  said otherwise.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

GZIP_MIN_BYTES = 1024  # below a kilobyte the header and the CPU cost more than they save
GZIP_LEVEL = 6  # zlib's default: most of level 9's gain at a fraction of its time on megabyte pages
NOT_COMPRESSED = (
    *DEFAULT_EXCLUDED_CONTENT_TYPES,
    "application/vnd.apache.parquet",
    "application/octet-stream",
)

VERSIONED_PREFIX = "vendor/"  # under /static: names that carry their version
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


class CachedStatic(StaticFiles):
    """/static with its cache lifetimes: a year for the versioned vendor files, else revalidate."""

    def file_response(self, full_path, stat_result, scope, status_code=200) -> Response:  # type: ignore[no-untyped-def]
        response = super().file_response(full_path, stat_result, scope, status_code)
        versioned = self.get_path(scope).replace("\\", "/").startswith(VERSIONED_PREFIX)
        response.headers["Cache-Control"] = IMMUTABLE if versioned else REVALIDATE
        return response


class RevalidatePages:
    """Pages and JSON answers without a Cache-Control of their own get `no-cache`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                kind = headers.get("content-type", "").partition(";")[0].strip()
                if kind in ("text/html", "application/json") and "cache-control" not in headers:
                    headers["Cache-Control"] = REVALIDATE
            await send(message)

        await self.app(scope, receive, send_with_policy)
