"""Schemathesis against the app's own OpenAPI schema (tiny model, in process): whatever it
generates, valid or not, gets no 500 and a response that the schema describes."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from support import tiny_settings
from vrollout.pipeline.analyzer import Analyzer
from vrollout.web.app import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Schema-violating data must be refused; a text or id list over its size cap (`maxLength`,
# `maxItems` from the settings) is refused with 413 Content Too Large, as the body limit is.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
# A request is slow only when the machine is busy (parallel workers on 2 cores): a timeout here would be a
# flaky failure, not a finding, so it is generous; a hang still ends in pytest-timeout's traceback.
CONFIG = SchemathesisConfig.from_dict(
    {"request-timeout": 300, "checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}}
)
BOUNDED = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def test_api_conforms_to_its_schema(tiny, tmp_path):
    # Small generation limits keep each generated request cheap; values over them are refused (4xx).
    config = tiny_settings(tmp_path, max_new_tokens=8, max_continuation_tokens=4)
    app = create_app(config, analyzer=Analyzer(tiny, config))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    failures = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
            *operation.get_strategies_from_examples(),  # the documented examples: a 200 to check
        )

        @BOUNDED
        @given(cases)
        def check(case):
            case.call_and_validate(checks=CHECKS)

        try:
            check()
        except (Exception, FailureGroup) as exc:  # every operation is tried; failures reported together
            failures[operation.label] = str(exc)[:3000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
