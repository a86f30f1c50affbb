"""The one `Backend` protocol: both implementations satisfy it, and the local one through it
gives exactly the numbers of the engine called directly."""

from __future__ import annotations

import inspect

import pytest
from support import contexts, response, tiny_settings
from support.tiny import tiny_pair
from support.vllm import offline_vllm_backend as vllm_backend
from vrollout.errors import BadTrajectory
from vrollout.local import engine
from vrollout.local.backend import LocalBackend
from vrollout.local.continuations import continuations_from_every_prefix, eos_ids
from vrollout.local.pedagogical import pedagogical_rollout
from vrollout.models import ModelPair
from vrollout.pipeline.analyzer import Analyzer
from vrollout.pipeline.backend import Backend
from vrollout.pipeline.recovery import recovery
from vrollout.rules import Policy

CHUNK = 8


def parameters(function: object) -> list[tuple[str, object, object]]:
    """Each parameter's name, kind and default (annotations are strings: not compared)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def methods(cls: type) -> dict[str, list[tuple[str, object, object]]]:
    """The protocol's methods (not its properties) and their parameters."""
    return {
        name: parameters(member)
        for name, member in vars(cls).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }


@pytest.fixture(scope="module")
def pair() -> ModelPair:
    return tiny_pair(teacher_seed=5)  # a different teacher: divergences and interventions happen


def test_both_backends_satisfy_the_protocol(pair: ModelPair):
    remote = vllm_backend(pair)
    try:
        for backend in (LocalBackend(pair, CHUNK), remote):
            assert isinstance(backend, Backend)
            for name, expected in methods(Backend).items():  # same names, kinds and defaults
                assert parameters(getattr(type(backend), name)) == expected, (backend.name, name)
            assert isinstance(backend.padded_batches, bool) and isinstance(backend.remote, bool)
            assert backend.lines_in_flight >= 1
            assert backend.describe()["backend"] == backend.name
        assert not isinstance(object(), Backend)
        assert remote.lines_in_flight == 6 and remote.status(0.0)["replica_errors"] == []
        remote.check_top_k(20)
        with pytest.raises(BadTrajectory, match="VROLLOUT_VLLM_LOGPROBS"):
            remote.check_top_k(21)
    finally:
        remote.close()


def test_the_analyzer_holds_a_local_backend_by_default(pair: ModelPair, tmp_path):
    analyzer = Analyzer(pair, tiny_settings(tmp_path))
    assert isinstance(analyzer.backend, LocalBackend) and analyzer.backend.pair is pair
    assert analyzer.backend.chunk_size == CHUNK and analyzer.lines_in_flight() == 1
    described = {"backend": "local", "device": "cpu", "dtype": "float32"}  # fp32: no noise object
    assert analyzer.backend.describe() == described and analyzer.backend.status(0.0) == {}


def test_local_backend_gives_the_engines_numbers(pair: ModelPair):
    backend = LocalBackend(pair, CHUNK)
    s_ctx, t_ctx = contexts(pair)
    resp = response(pair, 20)

    generated = backend.generate(s_ctx, max_new_tokens=12, temperature=0.9, top_p=0.8, seed=4)
    assert generated == engine.generate(pair.student, s_ctx, 12, 0.9, 0.8, 4)

    result, record = backend.replay(s_ctx, t_ctx, resp, top_k=4)
    assert record == {"device": "cpu", "dtype": "float32"}
    assert result == engine.replay(pair, s_ctx, t_ctx, resp, top_k=4, chunk_size=CHUNK)

    items = [(s_ctx, t_ctx, resp), (s_ctx, s_ctx, resp[:7])]
    batch = backend.replay_batch(items, top_k=3)
    assert [r for r, _ in batch] == engine.replay_batch(pair, items, top_k=3, chunk_size=CHUNK)

    kept, _ = backend.replay(s_ctx, t_ctx, resp, top_k=4, keep_for_continuations=True)
    assert kept.teacher_cache is not None
    direct = continuations_from_every_prefix(pair.teacher, t_ctx, resp, 5, vocab_size=pair.vocab_size)
    assert backend.continuations(t_ctx, resp, 5, replayed=kept) == direct
    assert backend.continuations(t_ctx, resp, 5) == direct

    policy = Policy(threshold=0.2, temperature=1.0, top_p=0.9, seed=11, max_new_tokens=16)
    assert backend.pedagogical_rollout(s_ctx, t_ctx, policy, "391") == pedagogical_rollout(
        pair, s_ctx, t_ctx, policy, "391"
    )


def test_recovery_through_the_protocol_tries_what_the_engine_decodes(pair: ModelPair):
    backend = LocalBackend(pair, CHUNK)
    s_ctx, t_ctx = contexts(pair)
    resp = response(pair, 12)
    result, _ = backend.replay(s_ctx, t_ctx, resp, top_k=2)
    divergences = [
        t for t, (top1, y) in enumerate(zip(result.teacher_top1_id, resp, strict=True)) if top1 != y
    ]
    reference = "zzz-never-said"
    rec = recovery(pair, t_ctx, resp, result.reverse_kl, divergences, reference, 6, backend.continuations)
    direct = continuations_from_every_prefix(
        pair.teacher, t_ctx, resp, 6, vocab_size=pair.vocab_size, positions=list(range(len(resp)))
    )
    tok = pair.teacher.tokenizer
    assert [p["continuation"] for p in rec["points"]] == [
        tok.decode(c, skip_special_tokens=False) for c in direct
    ]
    assert all(len(c) <= 6 and set(c[:-1]).isdisjoint(eos_ids(pair.teacher)) for c in direct)
