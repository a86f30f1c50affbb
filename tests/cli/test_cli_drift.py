"""The CLI's folder output with training steps: drift.csv beside the other exports, checked
against pandas on summaries.csv and steps.parquet, and the drift table in report.html."""

from __future__ import annotations

import pandas as pd
import pytest
from support import GOOD, tiny_settings
from vrollout.cli.commands import write_dataset
from vrollout.pipeline.analyzer import Analyzer

LINES = [
    {**GOOD, "id": "a", "step": "ckpt-late", "response": "hello the world", "reference_answer": "world"},
    {**GOOD, "id": "b", "step": "ckpt-early", "response": "hello there", "correct": True, "score": 0.25},
    {**GOOD, "id": "c", "step": "ckpt-late", "response": "no", "reference_answer": "world", "score": 1.0},
]


def test_drift_csv_in_the_folder_matches_pandas(tiny, tmp_path):
    settings = tiny_settings(tmp_path)
    analyzer = Analyzer(tiny, settings)
    analyses = [analyzer.analyze({**line, "privileged": "the answer: world"}) for line in LINES]
    out = tmp_path / "out"
    out.mkdir()
    write_dataset(out, "runs", analyses, [], analyzer, settings)
    drift = pd.read_csv(out / "drift.csv").set_index("step")
    assert list(drift.index) == ["ckpt-late", "ckpt-early"]  # names: in the order first seen
    summaries = pd.read_csv(out / "summaries.csv")
    steps = pd.read_parquet(out / "steps.parquet").merge(summaries[["analysis_id", "step"]], on="analysis_id")
    per_token, by = steps.groupby("step"), summaries.groupby("step")
    late = summaries[summaries["step"] == "ckpt-late"]
    assert drift.loc["ckpt-late", "trajectories"] == 2 and drift.loc["ckpt-late", "correct_share"] == 0.5
    assert late["verdict_method"].tolist() == ["text", "text"]
    assert summaries.set_index("trajectory_id").loc["b", "verdict_method"] == "given"
    for step in drift.index:
        row = drift.loc[step]
        assert row["agreement_rate"] == pytest.approx(per_token.get_group(step)["agree"].mean())
        assert row["reverse_kl_mean"] == pytest.approx(per_token.get_group(step)["reverse_kl"].mean())
        assert row["tokens"] == by.get_group(step)["tokens"].sum()
    assert drift.loc["ckpt-early", "score_mean"] == 0.25 and drift.loc["ckpt-late", "score_mean"] == 1.0
    html = (out / "report.html").read_text()
    assert 'id="drift-table"' in html and "ckpt-early" in html and "fig-drift_agreement" in html
