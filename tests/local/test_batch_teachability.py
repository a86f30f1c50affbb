"""Batched lines with different top_k: each line's teacher mass on the student's top-k is summed
over its own k, as when it runs alone (the batch scores the largest k; each line keeps its own)."""

from __future__ import annotations

import pytest
from support import tiny_settings
from vrollout.pipeline.analyzer import Analyzer


def test_lines_of_different_top_k_keep_their_own_mass(tiny, tmp_path):
    analyzer = Analyzer(tiny, tiny_settings(tmp_path))  # no store: nothing saved
    lines = [
        {"prompt": "hi", "response": "the hello world", "privileged": "a hint", "top_k": k}
        for k in (1, 5, 2, 5, 1)
    ]
    prepared = [(n, analyzer.prepare(line)) for n, line in enumerate(lines)]
    groups = analyzer.plan_batches(prepared)
    assert any(len({p.options.top_k for _, p in g}) > 1 for g in groups)  # k = 1, 2 and 5 together
    for group in groups:
        for (n, prep), got in zip(group, analyzer.run_group(group, [{}] * len(group)), strict=True):
            alone = analyzer.run(prep, store=False)
            mass = [s["teacher_mass_on_student_topk"] for s in got["steps"]]
            assert mass == pytest.approx(
                [s["teacher_mass_on_student_topk"] for s in alone["steps"]], abs=1e-5
            )
            assert got["top_k"] == lines[n]["top_k"]
