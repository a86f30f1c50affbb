"""Request bodies checked with this app's limits.

A route declares its body with a base model of `schema.requests` (`body: AnalyzeRequest`);
`bind_request_models` gives the app a copy of the router whose routes take the bounded version
built from the settings (`inputs.validation.request_models`) instead. FastAPI then validates each
body once, with the limits the rest of the app enforces, and `/docs` shows them.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel


def _rebind(endpoint: Callable[..., Any], models: Mapping[type, type]) -> Callable[..., Any] | None:
    """`endpoint` with each parameter annotated with a base model taking its bounded version
    (None when it has no such parameter). FastAPI reads the signature; the call is the same."""
    signature = inspect.signature(endpoint, eval_str=True)
    params = list(signature.parameters.values())
    bound_params = [
        p.replace(annotation=next((v for k, v in models.items() if p.annotation is k), p.annotation))
        for p in params
    ]
    replaced = [
        q.annotation for p, q in zip(params, bound_params, strict=True) if p.annotation is not q.annotation
    ]
    if not replaced:
        return None

    if inspect.iscoroutinefunction(endpoint):

        @functools.wraps(endpoint)
        async def bound(**kwargs: Any) -> Any:
            return await endpoint(**kwargs)

    else:  # FastAPI runs it on a thread, as it would the endpoint

        @functools.wraps(endpoint)
        def bound(**kwargs: Any) -> Any:
            return endpoint(**kwargs)

    bound.__signature__ = signature.replace(parameters=bound_params)  # type: ignore[attr-defined]
    bound.request_model = replaced[0]  # type: ignore[attr-defined]
    return bound


def bind_request_models(router: APIRouter, models: Mapping[type, type]) -> APIRouter:
    """A router with `router`'s routes, those whose body is a key of `models` taking its value."""
    bound = APIRouter()
    for route in router.routes:
        if isinstance(route, APIRoute) and (endpoint := _rebind(route.endpoint, models)) is not None:
            route = copy.copy(route)  # the original stays as declared, for other apps
            route.endpoint = endpoint
        bound.routes.append(route)
    return bound


def body_model(request: Request) -> type[BaseModel] | None:
    """The bounded model the request's route validates its body with (None for other routes):
    its field names make suggestions for misspelt keys."""
    return getattr(getattr(request.scope.get("route"), "endpoint", None), "request_model", None)
