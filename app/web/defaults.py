"""The defaults the API applies, as the forms of `/` and Upload show them: read from the code that
applies them (`pipeline.analyzer.options_from` on a request that sets nothing, the request models'
field defaults), so a form never starts from a number the API would not pick."""

from __future__ import annotations

from typing import Any

from vrollout.config import Settings
from vrollout.metrics.objectives import ObjectiveSpec
from vrollout.pipeline.analyzer import PEDAGOGICAL_MAX_NEW_TOKENS, options_from
from vrollout.schema.requests import AnalyzeRequest, PedagogicalRequest


def form_defaults(settings: Settings) -> dict[str, Any]:
    """What an analysis (and a pedagogical rollout) gets for each option a request leaves out."""
    analysis = options_from(AnalyzeRequest(prompt="-"), settings)
    objectives = ObjectiveSpec()
    return {
        "top_k": analysis.top_k,
        "continuation_tokens": analysis.continuation_tokens,
        "max_new_tokens": analysis.max_new_tokens,
        "temperature": analysis.temperature,
        "top_p": analysis.top_p,
        "seed": analysis.seed,
        "objective_k": objectives.k,
        "jsd_beta": objectives.jsd_beta,
        "clip_tau": objectives.clip_tau,
        "threshold": PedagogicalRequest.model_fields["threshold"].default,
        "pedagogical_max_new_tokens": min(PEDAGOGICAL_MAX_NEW_TOKENS, settings.max_new_tokens),
    }
