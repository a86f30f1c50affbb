"""The distillation objectives on the real default model (SmolLM2-135M): the chunked engine
against the naive float64 reference, each prefix run alone (docs/objectives.md)."""

from __future__ import annotations

import pytest
import torch
from vrollout.local.engine import replay
from vrollout.local.reference import naive_replay_objectives
from vrollout.metrics.objectives import ObjectiveSpec
from vrollout.pipeline.analyzer import Analyzer

pytestmark = pytest.mark.real_model


def test_real_model_objectives_equal_naive_float64(real_analyzer: Analyzer):
    prep = real_analyzer.prepare(
        {"prompt": "What is 17*23?", "response": "17*23 = 381.", "privileged": "17*23 = 391"}
    )
    pair, ctx = real_analyzer.pair, prep.ctx
    spec = ObjectiveSpec(k=20, jsd_beta=0.5, clip_tau=0.05)
    result = replay(pair, ctx.student_ids, ctx.teacher_ids, ctx.response_ids, chunk_size=4, objectives=spec)
    want = naive_replay_objectives(pair, ctx.student_ids, ctx.teacher_ids, ctx.response_ids, spec)
    for name in spec.engine_names():
        torch.testing.assert_close(
            torch.tensor(result.objectives[name], dtype=torch.float64),
            torch.tensor([step[name] for step in want], dtype=torch.float64),
            atol=2e-4,
            rtol=1e-3,
            msg=lambda m, n=name: f"{n}: {m}",
        )
    assert result.objectives["clip_hit"] == [step["clip_hit"] for step in want]
