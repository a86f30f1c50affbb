"""Drift across training steps on a tiny model's job: the `/drift` export (JSON and CSV) checked
against pandas on the job's own step and summary exports, the verdicts in the summaries, and the
job page's drift card; a digest stored before steps existed is made again."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from support import GOOD, assert_error, upload, wait_done
from vrollout.pipeline.digest import DIGEST_VERSION

# Steps out of order, as a shuffled log: 2 < 10 < 30 by number (not "10" < "2" as text).
LINES = [
    {**GOOD, "id": "a", "step": 10, "response": "the world is 4", "reference_answer": "4", "score": 1.0},
    {**GOOD, "id": "b", "step": 2, "response": "hello there", "reference_answer": "world", "score": 0.0},
    {**GOOD, "id": "c", "step": 2, "response": "hello the world", "correct": False, "score": 0.5},
    {**GOOD, "id": "d", "step": 10, "response": "no", "reference_answer": "world"},
    {**GOOD, "id": "e", "step": 30, "response": r"so \boxed{\frac{1}{2}}", "reference_answer": "0.5"},
    {**GOOD, "id": "f", "response": "world world"},  # no step: in the other views only
]


@pytest.fixture
def drift_job(tiny_client) -> str:
    text = "\n".join(json.dumps(x) for x in LINES)
    job_id = upload(tiny_client, text, privileged="the answer: world").json()["job"]["id"]  # KL > 0
    assert wait_done(tiny_client, job_id)["done"] == len(LINES)
    return job_id


def expected(tiny_client, job_id: str) -> pd.DataFrame:
    """The drift table, recomputed with pandas from the job's summaries and every-step exports."""
    summaries = pd.DataFrame(tiny_client.get(f"/api/jobs/{job_id}/summaries").json())
    steps = pd.read_parquet(io.BytesIO(tiny_client.get(f"/api/jobs/{job_id}/steps").content))
    summaries = summaries[summaries["step"].notna()].astype({"step": int})
    steps = steps.merge(summaries[["analysis_id", "step"]], on="analysis_id")
    by, per_token = summaries.groupby("step"), steps.groupby("step")
    at_divergences = steps[~steps["agree"]].groupby("step")["reverse_kl"].sum()
    verdicts = summaries[summaries["correct"].notna()].astype({"correct": bool}).groupby("step")["correct"]
    return pd.DataFrame(
        {
            "trajectories": by.size(),
            "tokens": by["tokens"].sum(),
            "tokens_mean": by["tokens"].mean(),
            "agreement_rate": per_token["agree"].mean(),
            "reverse_kl_mean": per_token["reverse_kl"].mean(),
            "reverse_kl_share_at_divergences": at_divergences / per_token["reverse_kl"].sum(),
            "diverged_share": by["first_divergence"].apply(lambda s: s.notna().mean()),
            "first_divergence_mean": by["first_divergence"].mean(),
            "first_divergence_median": by["first_divergence"].median(),
            "verdicts": verdicts.size(),
            "correct_share": verdicts.mean(),
            "score_mean": by["score"].mean(),
        }
    )


def test_drift_export_matches_pandas_on_the_exports(tiny_client, drift_job):
    rows = tiny_client.get(f"/api/jobs/{drift_job}/drift").json()
    assert [r["step"] for r in rows] == [2, 10, 30]
    want = expected(tiny_client, drift_job)
    got = pd.DataFrame(rows).set_index("step")
    assert want["reverse_kl_mean"].gt(0).all()  # a real signal, not zeros compared with zeros
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False, check_names=False)

    r = tiny_client.get(f"/api/jobs/{drift_job}/drift", params={"format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == f'attachment; filename="{drift_job}-drift.csv"'
    table = pd.read_csv(io.StringIO(r.text)).set_index("step")
    pd.testing.assert_frame_equal(table[want.columns], want, check_dtype=False, check_names=False)

    assert_error(
        tiny_client.get(f"/api/jobs/{drift_job}/drift", params={"format": "xlsx"}), 422, "json or csv"
    )
    assert_error(tiny_client.get("/api/jobs/nope/drift"), 404)


def test_summaries_carry_the_verdict_and_how(tiny_client, drift_job):
    rows = {r["trajectory_id"]: r for r in tiny_client.get(f"/api/jobs/{drift_job}/summaries").json()}
    got = {k: (r["correct"], r["verdict_method"], r["step"], r["score"]) for k, r in rows.items()}
    assert got == {
        "a": (True, "math-verify", 10, 1.0),
        "b": (False, "text", 2, 0.0),
        "c": (False, "given", 2, 0.5),  # "world" is in it, but the line's own verdict stands
        "d": (False, "text", 10, None),
        "e": (True, "math-verify", 30, None),
        "f": (None, None, None, None),
    }
    analysis = tiny_client.get(f"/api/analyses/{rows['e']['analysis_id']}").json()
    assert analysis["verdict"] == {
        "correct": True, "method": "math-verify", "parsed_answer": r"\frac{1}{2}", "parsed_reference": "0.5",
        "extractor": "boxed", "restated": False, "text_form": None,
    }  # fmt: skip
    assert analysis["trajectory"]["step"] == 30 and analysis["trajectory"]["correct"] is None
    page = tiny_client.get(f"/analyses/{rows['e']['analysis_id']}").text
    assert 'id="verdict"' in page and "math-verify compared the answer" in page and "Training step" in page


def test_job_page_and_figures_show_the_drift(tiny_client, drift_job):
    figures = tiny_client.get(f"/api/jobs/{drift_job}/figures").json()
    assert {"drift_agreement", "drift_reverse_kl", "drift_length"} <= set(figures)
    (kl,) = figures["drift_reverse_kl"]["data"]
    rows = tiny_client.get(f"/api/jobs/{drift_job}/drift").json()
    assert kl["x"] == ["2", "10", "30"] and kl["y"] == [r["reverse_kl_mean"] for r in rows]
    page = tiny_client.get(f"/jobs/{drift_job}").text
    assert 'id="drift"' in page and f"/api/jobs/{drift_job}/drift?format=csv" in page


def test_a_job_without_steps_has_no_drift(tiny_client):
    job_id = upload(tiny_client, json.dumps(GOOD)).json()["job"]["id"]
    wait_done(tiny_client, job_id)
    assert tiny_client.get(f"/api/jobs/{job_id}/drift").json() == []
    assert not any(k.startswith("drift_") for k in tiny_client.get(f"/api/jobs/{job_id}/figures").json())


def test_digests_stored_before_steps_are_made_again(tiny_client, drift_job):
    before = tiny_client.get(f"/api/jobs/{drift_job}/drift").json()
    store = tiny_client.app.state.store
    with store.connect() as db:
        for analysis_id, stored in db.execute("SELECT id, digest FROM analyses").fetchall():
            old = {
                k: v for k, v in json.loads(stored).items() if k not in ("step", "reverse_kl_at_divergences")
            }
            db.execute(
                "UPDATE analyses SET digest = ? WHERE id = ?",
                (json.dumps({**old, "version": 2}), analysis_id),
            )
    with store.connect() as db:
        assert {json.loads(d)["version"] for (d,) in db.execute("SELECT digest FROM analyses")} == {2}
    assert tiny_client.get(f"/api/jobs/{drift_job}/drift").json() == before
    with store.connect() as db:  # made again and stored, at this version
        assert {json.loads(d)["version"] for (d,) in db.execute("SELECT digest FROM analyses")} == {
            DIGEST_VERSION
        }


def test_bad_score_correct_or_step_is_a_clear_error(tiny_client):
    for bad, words in (
        ({"score": "1.0"}, "score"),
        ({"correct": 1}, "correct"),
        ({"step": 1.5}, "step"),
        ({"step": "x" * 201}, "step"),
        ({"score": float("nan")}, "score"),
    ):
        r = tiny_client.post(
            "/api/analyze", content=json.dumps({**GOOD, **bad}), headers={"content-type": "application/json"}
        )
        assert_error(r, 422, words)
