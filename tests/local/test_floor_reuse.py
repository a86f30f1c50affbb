"""The noise floor on the local engine with a separate teacher: its bare replay runs only the
teacher, against the student's pass kept from the analysis's replay (docs/metrics.md,
"Preflight"), and gives exactly the numbers of the old two-model replay."""

from __future__ import annotations

import pytest
from support import tiny_settings
from support.tiny import tiny_pair
from vrollout.local import engine
from vrollout.pipeline.analyzer import Analyzer
from vrollout.pipeline.contexts import TokenLimit
from vrollout.pipeline.preflight import bare_teacher_ids, noise_floor
from vrollout.pipeline.replay import _no_progress

PRIVILEGED = "The answer is 4."
LINES = [
    {"prompt": "What is 2+2?", "response": "It is 4, the hello world", "privileged": PRIVILEGED},
    {"prompt": "What is 2+2?", "response": "It is 4.", "privileged": PRIVILEGED},
    {"prompt": "Say hello", "response": "the hello the world, hello there", "privileged": "hello there"},
]


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(teacher_seed=1)


@pytest.fixture
def analyzer(pair, tmp_path):
    return Analyzer(pair, tiny_settings(tmp_path))


def bare_ids(analyzer, prep):
    limit = TokenLimit("teacher context", analyzer.settings.max_context_tokens, "VROLLOUT_MAX_CONTEXT_TOKENS")
    return bare_teacher_ids(prep.traj, prep.ctx, analyzer.pair, limit)


def two_pass_floor(analyzer, prep, main):
    """The floor as it was computed before: a full replay of both models with the bare context."""
    bare = bare_ids(analyzer, prep)
    ctx = prep.ctx
    replay = engine.replay(analyzer.pair, ctx.student_ids, bare, ctx.response_ids, top_k=1, chunk_size=8)
    return noise_floor(main, replay, bare == ctx.student_ids, False)


NUMBERS = [
    "tokens",
    "reverse_kl_mean",
    "reverse_kl_max",
    "reverse_kl_total",
    "max_abs_logprob_delta",
    "repeat_spread_max",
    "repeat_spread_mean",
    "signal_reverse_kl_mean",
    "same_context",
]


def test_single_line_floor_equals_the_two_model_replay(analyzer):
    prep = analyzer.prepare(LINES[0])
    ctx = prep.ctx
    main = engine.replay(analyzer.pair, ctx.student_ids, ctx.teacher_ids, ctx.response_ids, chunk_size=8)
    expected = two_pass_floor(analyzer, prep, main)
    floor = analyzer.run(prep, store=False)["preflight"]["noise_floor"]
    assert floor["computed"] and expected["reverse_kl_mean"] > 0  # a real model gap
    for key in NUMBERS:  # exact: the student's logits come from the very same hidden states
        assert floor[key] == expected[key], key
    assert floor["reused_student_pass"] is True and floor["reused_replay"] is False
    assert floor["repeat_spread_max"] == 0.0  # by construction: one student pass


def test_teacher_only_replay_equals_the_full_replay(pair):
    """Engine level: every per-step field of `replay_teacher` equals `replay`'s, exactly."""
    student, teacher, response = [1, 40, 50, 60], [1, 40, 70, 50, 60], [80, 90, 100, 110, 40, 2]
    main = engine.replay(pair, student, teacher, response, chunk_size=4, keep_student_hidden=True)
    full = engine.replay(pair, student, student[:2], response, top_k=1, chunk_size=4)
    alone = engine.replay_teacher(pair, main.student_hidden, student[:2], response, top_k=1, chunk_size=4)
    assert alone == full


def test_batched_floors_equal_the_two_model_batch(analyzer):
    """A job's padded batch: the bare replays are one padded teacher pass against the batch's
    kept student rows; equal to the old padded two-model batch (same shapes: exact)."""
    preps = [analyzer.prepare(line) for line in LINES]
    pair = analyzer.pair
    items = [(p.ctx.student_ids, p.ctx.teacher_ids, p.ctx.response_ids) for p in preps]
    mains = engine.replay_batch(pair, items, top_k=5, chunk_size=8)
    bare_items = [(p.ctx.student_ids, bare_ids(analyzer, p), p.ctx.response_ids) for p in preps]
    bares = engine.replay_batch(pair, bare_items, top_k=1, chunk_size=8)
    analyses = analyzer.run_batch(preps, [{} for _ in preps])
    for prep, main, bare, item, analysis in zip(preps, mains, bares, bare_items, analyses, strict=True):
        expected = noise_floor(main, bare, item[1] == prep.ctx.student_ids, False)
        floor = analysis["preflight"]["noise_floor"]
        for key in NUMBERS:
            assert floor[key] == expected[key], key
        assert floor["reused_student_pass"] is True and floor["repeat_spread_max"] == 0.0


class Calls:
    """Counts the forward calls of a model's decoder (a real forward hook)."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.model.get_decoder().register_forward_hook(self.hook)

    def hook(self, module, args, output):
        self.n += 1


@pytest.mark.parametrize("batched", [False, True])
def test_the_student_runs_once_per_analysis(analyzer, batched):
    pair = analyzer.pair
    student, teacher = Calls(pair.student), Calls(pair.teacher)
    try:
        preps = [analyzer.prepare(line) for line in LINES]
        if batched:
            floors = [a["preflight"]["noise_floor"] for a in analyzer.run_batch(preps, [{} for _ in preps])]
        else:
            floors = [analyzer.run(preps[0], store=False)["preflight"]["noise_floor"]]
    finally:
        student.handle.remove()
        teacher.handle.remove()
    assert all(f["computed"] for f in floors)
    assert student.n == 1  # the analysis's replay only: the floor read its hidden states
    assert teacher.n == 2  # the analysis's teacher pass and the bare one


def test_kept_student_pass_is_small_and_freed(analyzer):
    """Only (T, H) is kept (a copy, not a view of the whole context + response pass), and
    nothing once the floor is computed."""
    prep = analyzer.prepare(LINES[0])
    ctx = prep.ctx
    result, _ = analyzer.backend.replay(
        ctx.student_ids, ctx.teacher_ids, ctx.response_ids, 5, keep_student_pass=True
    )
    hidden = result.student_hidden
    T, H = len(ctx.response_ids), analyzer.pair.student.model.config.hidden_size
    assert tuple(hidden.shape) == (T, H)
    assert hidden.untyped_storage().nbytes() == T * H * hidden.element_size()
    analyzer.noise_floors([prep], [ctx.response_ids], [result], _no_progress)
    assert result.student_hidden is None


def test_not_kept_unless_a_floor_needs_it(analyzer, pair, tmp_path):
    prep = analyzer.prepare(LINES[0])
    ctx = prep.ctx
    result, _ = analyzer.backend.replay(ctx.student_ids, ctx.teacher_ids, ctx.response_ids, 5)
    assert result.student_hidden is None
    off = Analyzer(pair, tiny_settings(tmp_path, noise_floor=False))
    assert off._keep_student_pass([off.prepare(LINES[0])]) is False
    assert analyzer._keep_student_pass([analyzer.prepare({"prompt": "hi", "response": "hello"})]) is False
    assert analyzer._keep_student_pass([prep]) is True


def test_the_page_says_only_the_teacher_ran_again(pair, tmp_path):
    from fastapi.testclient import TestClient
    from vrollout.web.app import create_app

    settings = tiny_settings(tmp_path)
    with TestClient(create_app(settings, analyzer=Analyzer(pair, settings))) as client:
        analysis = client.post("/api/analyze", json=LINES[0]).json()
        html = client.get(f"/analyses/{analysis['id']}").text
    assert analysis["preflight"]["noise_floor"]["reused_student_pass"] is True
    assert "only the teacher ran again" in html and "in a repeated request" not in html
