"""/docs: Swagger UI from the vendored bundle under /static/vendor, so the manual works offline
and under the app's own Content-Security-Policy (its start-up is static/docs.js, not an inline
script). And what the OpenAPI schema says about access: the bearer token (or X-API-Token header)
that `security.TokenGate` asks for, so Swagger's Authorize button works. No /redoc: one manual."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

# Swagger UI, vendored as plotly.js is (static/vendor/swagger-ui-5.35.0.LICENSE says from where).
SWAGGER_JS = "/static/vendor/swagger-ui-bundle-5.35.0.js"
SWAGGER_CSS = "/static/vendor/swagger-ui-5.35.0.css"

SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's API token (VROLLOUT_API_TOKEN): `Authorization: Bearer TOKEN`.",
    },
    "apiToken": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Token",
        "description": "The same token in a header of its own.",
    },
}
ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
REFUSALS = {
    "400": "the Host header names another server (VROLLOUT_ALLOWED_HOSTS; DNS rebinding)",
    "403": "a browser's write from a page of another site",
}
TOKEN_REFUSALS = {
    "401": "no API token, or a wrong one",
    "429": "too many wrong tokens from this address (VROLLOUT_LOGIN_MAX_FAILURES); see Retry-After",
}


def describe_access(schema: dict[str, Any], token_required: bool) -> dict[str, Any]:
    """Declare the token schemes (always, so clients know how to send one) and, when this server
    asks for a token, require one of them on every operation. Add the refusals that come from
    the middleware, not from the routes, to every operation that can get them."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    refusals = {**REFUSALS, **(TOKEN_REFUSALS if token_required else {})}
    if token_required:
        schema["security"] = [{"bearer": []}, {"apiToken": []}]
    for path in schema.get("paths", {}).values():
        for method, operation in path.items():
            for status, why in refusals.items():
                if status == "403" and method in ("get", "head", "options"):
                    continue
                answer = operation.setdefault("responses", {}).setdefault(status, {"content": ERROR})
                answer["description"] = "; or ".join(filter(None, [answer.get("description"), why]))
    return schema


def install_docs(app: FastAPI, token_required: bool) -> None:
    """/docs, and the access part of /openapi.json (see `describe_access`)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe_access(build(), token_required)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    async def docs(request: Request) -> Response:
        context = {
            "title": f"{app.title} - API",
            "openapi_url": app.openapi_url or "/openapi.json",
            "swagger_js": SWAGGER_JS,
            "swagger_css": SWAGGER_CSS,
        }
        return request.app.state.templates.TemplateResponse(request, "docs.html", context)
