"""The engine on the real default model (SmolLM2-135M-Instruct, fp32 on CPU) against the naive
per-prefix reference, with privileged info, on two prompts (the student is wrong on one)."""

from __future__ import annotations

import pytest
from vrollout.local.continuations import continuations_from_every_prefix, cut_at_eos, eos_ids
from vrollout.local.engine import replay
from vrollout.local.metrics import STEP_FIELDS as FLOAT_FIELDS
from vrollout.local.reference import naive_continuation, naive_replay
from vrollout.pipeline.analyzer import Analyzer

pytestmark = pytest.mark.real_model

CASES = [
    # The student answers 381 (wrong); the reference solution says 391.
    ("What is 17*23?", "17*23 = 381.", "17*23 = 17*20 + 17*3 = 340 + 51 = 391."),
    ("Name the capital of France.", "The capital of France is Paris.", "Paris"),
]


@pytest.mark.parametrize("prompt,response,privileged", CASES)
def test_real_model_equals_naive_reference(real_analyzer: Analyzer, prompt, response, privileged):
    prep = real_analyzer.prepare({"prompt": prompt, "response": response, "privileged": privileged})
    pair, ctx = real_analyzer.pair, prep.ctx
    assert pair.shared and ctx.student_ids != ctx.teacher_ids
    result = replay(pair, ctx.student_ids, ctx.teacher_ids, ctx.response_ids, top_k=5, chunk_size=4)
    ref = naive_replay(pair, ctx.student_ids, ctx.teacher_ids, ctx.response_ids, top_k=5)
    for name in (*FLOAT_FIELDS, "teacher_mass_on_student_topk"):
        got = (
            result.teacher_mass_on_student_topk()
            if name.startswith("teacher_mass")
            else getattr(result, name)
        )
        want = [s[name] for s in ref]
        # 30 fp32 layers over different sequence lengths: logits agree to ~1e-4, sums over
        # 49,152 tokens to ~1e-3.
        assert got == pytest.approx(want, abs=2e-3, rel=1e-3), name
    assert result.teacher_top1_id == [s["teacher_top1_id"] for s in ref]
    assert result.teacher_rank == [s["teacher_rank"] for s in ref]
    assert result.teacher_topk_ids == [s["teacher_topk_ids"][:5] for s in ref]


@pytest.mark.smoke  # the fast tier's one run of the real default model (tests/support/tiers.py)
def test_wrong_student_diverges_where_the_answer_goes_wrong(real_analyzer: Analyzer):
    a = real_analyzer.analyze(
        {"prompt": "What is 17*23?", "response": "17*23 = 381.", "privileged": "17*23 = 391"}
    )
    tokens = [s["token"] for s in a["steps"]]
    assert "".join(tokens) == "17*23 = 381."
    first = a["summary"]["first_divergence"]
    assert first is not None and "".join(tokens[:first]) == "17*23 = 3"  # at the wrong digit
    assert a["steps"][first]["teacher_top1"] == "9"
    assert a["steps"][first]["reverse_kl"] == a["summary"]["reverse_kl_max"]


@pytest.mark.parametrize("share", [True, False], ids=["shared", "every-branch"])
def test_real_model_continuations_equal_naive(real_analyzer: Analyzer, share: bool):
    prep = real_analyzer.prepare(
        {"prompt": "What is 17*23?", "response": "17*23 = 381.", "privileged": "17*23 = 391"}
    )
    teacher, ctx, vocab = real_analyzer.pair.teacher, prep.ctx, real_analyzer.pair.vocab_size
    got = continuations_from_every_prefix(
        teacher, ctx.teacher_ids, ctx.response_ids, 6, vocab_size=vocab, branch_chunk=5, share=share
    )
    eos = eos_ids(teacher)
    want = [
        cut_at_eos(naive_continuation(teacher, ctx.teacher_ids + ctx.response_ids[:t], 6, vocab), eos)
        for t in range(len(ctx.response_ids))
    ]
    assert got == want
    text = real_analyzer.pair.teacher.tokenizer.decode(got[8])
    assert text.startswith("91")  # from "17*23 = 3" the teacher would finish "391"


def test_real_api_generates_and_describes_models(real_client):
    models = real_client.get("/api/models").json()
    assert models["student"]["name"] == "SmolLM2-135M-Instruct" and models["shared_weights"]
    assert models["student"]["vocab_size"] == 49152 and models["student"]["dtype"] == "float32"
    body = {"prompt": "What is 17*23?", "generation": {"max_new_tokens": 24}}
    a = real_client.post("/api/analyze", json=body).json()
    assert a["response_text"].startswith("17*23 = 381")  # the handy wrong student, greedy
    assert a["generation"]["max_new_tokens"] == 24 and a["retokenized"] is False
    assert real_client.get(f"/api/analyses/{a['id']}").json()["steps"] == a["steps"]


def test_real_model_recovery_curve(real_analyzer: Analyzer):
    """From "17*23 = 3" the teacher still finishes 391; from "17*23 = 38" it cannot."""
    a = real_analyzer.analyze(
        {
            "prompt": "What is 17*23?",
            "response": "17*23 = 381.",
            "privileged": "17*23 = 391",
            "reference_answer": 391,
            "recovery": True,
        }
    )
    rec = a["recovery"]
    tokens = [s["token"] for s in a["steps"]]
    assert rec["stride"] == 1 and not rec["student_success"]
    assert "".join(tokens[: rec["last_recoverable"]]) == "17*23 = 3"
    assert all(p["success"] for p in rec["points"][: rec["last_recoverable"] + 1])
    assert not any(p["success"] for p in rec["points"][rec["last_recoverable"] + 1 :])
    kl = [s["reverse_kl"] for s in a["steps"]]
    share = sum(kl[rec["last_recoverable"] + 1 :]) / sum(kl)
    assert a["summary"]["reverse_kl_share_after_last_recoverable"] == pytest.approx(share)


def test_real_model_pedagogical_rollout_one_decisive_intervention(real_analyzer: Analyzer):
    """Greedy SmolLM2 says 381; the teacher steps in once ("8" -> "9") and the student finishes
    the right answer, where OPD's virtual rollout of its own trajectory reads 399."""
    prep = real_analyzer.prepare_pedagogical(
        {
            "prompt": "What is 17*23?",
            "privileged": "17*23 = 391",
            "reference_answer": "391",
            "sweep": [0.001, 0.05],
        }
    )
    r = real_analyzer.pedagogical(prep)
    assert r["response_text"] == "17*23 = 391.<|im_end|>" and r["reached_reference"] is True
    [i] = r["interventions"]
    assert (i["proposal"], i["substitute"], i["position"]) == ("8", "9", 8)
    assert i["proposal_teacher_prob"] < 0.05
    assert [(row["num_interventions"], row["reached_reference"]) for row in r["sweep"]] == [
        (0, False),
        (1, True),
    ]
