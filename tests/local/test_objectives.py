"""The distillation objectives (docs/objectives.md): the engine's chunked values against a naive
float64 reference written from each framework's formula (local/reference.py), TRL's own
functions on the same logits, and what an analysis carries."""

from __future__ import annotations

import math

import pytest
import torch
from support import contexts, response
from support.tiny import tiny_pair
from vrollout.local.engine import replay, replay_batch
from vrollout.local.metrics import step_stats
from vrollout.local.reference import naive_objectives, naive_replay_objectives
from vrollout.metrics.objectives import ObjectiveSpec
from vrollout.schema.analysis import OBJECTIVE_NAMES, analysis_adapter

ENGINE_NAMES = ObjectiveSpec().engine_names()
TOL = dict(atol=2e-5, rtol=1e-4)


def random_logits(C: int, V: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(C, V, generator=g) * 3
    teacher = student + torch.randn(C, V, generator=g) * 1.5
    return student, teacher, torch.randint(0, V, (C,), generator=g)


def assert_objectives_match(got: dict[str, list], want: list[dict], names: tuple[str, ...]) -> None:
    for name in names:
        values = torch.tensor(got[name], dtype=torch.float64)
        expected = torch.tensor([step[name] for step in want], dtype=torch.float64)
        torch.testing.assert_close(values, expected, **TOL, msg=lambda m, n=name: f"{n}: {m}")
    assert got["clip_hit"] == [step["clip_hit"] for step in want]


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 0.2])
@pytest.mark.parametrize("V", [1000, 64 * 400], ids=["small-vocab", "grouped-topk"])
def test_step_stats_objectives_equal_naive_float64(beta, V):
    """Every vocabulary-wide objective, blocks of rows on the CPU (the grouped top-k path at
    64·400), equals the float64 definitions; the logits may be overwritten (scratch)."""
    student, teacher, tokens = random_logits(21, V)
    spec = ObjectiveSpec(k=20, jsd_beta=beta, clip_tau=0.3)
    stats = step_stats(student.clone(), teacher.clone(), tokens, 5, overwrite=True, objectives=spec)
    got = {name: values.tolist() for name, values in stats.objectives.items()}
    want = [
        naive_objectives(torch.log_softmax(s.double(), -1), torch.log_softmax(t.double(), -1), int(y), spec)
        for s, t, y in zip(student, teacher, tokens, strict=True)
    ]
    assert_objectives_match(got, want, ENGINE_NAMES)
    assert stats.student_topk_ids.shape == (21, 5)  # the display's top-k is still top_k wide


def test_jsd_equals_trl_generalized_jsd_loss():
    """TRL's GKDTrainer.generalized_jsd_loss (reduction none, summed over the vocabulary) on the
    same logits gives the engine's `jsd`, for β at both ends and inside."""
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    student, teacher, tokens = random_logits(9, 3000, seed=3)
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        ours = step_stats(
            student, teacher, tokens, 5, objectives=ObjectiveSpec(names=("jsd",), jsd_beta=beta)
        )
        trl = GKDTrainer.generalized_jsd_loss(student[None], teacher[None], beta=beta, reduction="none")
        torch.testing.assert_close(ours.objectives["jsd"], trl[0].sum(-1), atol=2e-6, rtol=1e-5)


def test_tail_objectives_equal_trl_tail_bucket():
    """TRL's server distillation (`_add_tail_bucket`, `_jsd_divergence` at β = 1 and 0) over the
    teacher's top-k gives `topk_tail_reverse_kl` and `topk_tail_forward_kl`."""
    from trl.experimental.server_distillation.server_distillation_trainer import (
        _add_tail_bucket,
        _jsd_divergence,
    )

    student, teacher, tokens = random_logits(7, 2000, seed=5)
    k = 20
    ours = step_stats(student, teacher, tokens, 5, objectives=ObjectiveSpec(k=k))
    logp, logq = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    lq_top, ids = torch.topk(logq, k)
    lp_top = logp.gather(1, ids)
    mask = torch.ones_like(ids, dtype=torch.bool)
    s_tail, support = _add_tail_bucket(lp_top, mask)
    t_tail, _ = _add_tail_bucket(lq_top, mask)
    for name, beta in (("topk_tail_reverse_kl", 1.0), ("topk_tail_forward_kl", 0.0)):
        trl = _jsd_divergence(s_tail, t_tail, beta, support).sum(-1)
        torch.testing.assert_close(ours.objectives[name].float(), trl, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("separate_teacher", [False, True], ids=["self-teacher", "separate-teacher"])
def test_replay_objectives_equal_naive_reference(separate_teacher):
    """On the tiny model, chunked (several chunks of 16) against each prefix run alone."""
    pair = tiny_pair(teacher_seed=7 if separate_teacher else None)
    s_ctx, t_ctx = contexts(pair)
    resp = response(pair, 40)
    spec = ObjectiveSpec(k=20, jsd_beta=0.5, clip_tau=0.05)
    result = replay(pair, s_ctx, t_ctx, resp, top_k=5, chunk_size=16, objectives=spec)
    want = naive_replay_objectives(pair, s_ctx, t_ctx, resp, spec)
    assert_objectives_match(result.objectives, want, ENGINE_NAMES)


def test_batch_objectives_equal_single_replays(tiny):
    s_ctx, t_ctx = contexts(tiny)
    items = [(s_ctx, t_ctx, response(tiny, n)) for n in (7, 19)]
    spec = ObjectiveSpec(k=8)
    batch = replay_batch(tiny, items, top_k=3, chunk_size=16, objectives=spec)
    for item, got in zip(items, batch, strict=True):
        alone = replay(tiny, *item, top_k=3, chunk_size=16, objectives=spec)
        assert set(got.objectives) == set(alone.objectives)
        for name, values in alone.objectives.items():
            torch.testing.assert_close(
                torch.tensor(got.objectives[name], dtype=torch.float64),
                torch.tensor(values, dtype=torch.float64),
                atol=1e-5,
                rtol=1e-4,
            )


def test_without_objectives_nothing_extra(tiny):
    s_ctx, t_ctx = contexts(tiny)
    assert replay(tiny, s_ctx, t_ctx, response(tiny, 5)).objectives == {}


def test_analysis_carries_objectives_summary_and_quadrants(tiny, tmp_path):
    """Through the analyzer: per-step objectives (k1 and k3 from the step's log-probs), the
    summary per objective, TIP's quadrants and the options; the analysis type holds them."""
    from support import tiny_settings
    from vrollout.pipeline.analyzer import Analyzer

    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    line = {"prompt": "abc", "privileged": "a mat", "response": "the cat sat on the mat"}
    a = analyzer.analyze({**line, "objective_k": 10, "clip_tau": 0.1})
    analysis_adapter().validate_python(a, strict=True)
    assert a["objective_options"]["objective_k"] == 10 and a["objective_options"]["clip_tau"] == 0.1
    for step in a["steps"]:
        obj = step["objectives"]
        assert set(obj) == {*OBJECTIVE_NAMES, "clip_hit"}
        assert obj["k1"] == pytest.approx(-step["advantage"])
        log_r = step["advantage"]
        assert obj["k3"] == pytest.approx(math.exp(log_r) - 1 - log_r, abs=1e-12)
        assert obj["clipped_reverse_kl"] == pytest.approx(min(step["reverse_kl"], 0.1))
        assert obj["clip_hit"] == (step["reverse_kl"] > 0.1)
    summary = a["summary"]
    assert set(summary["objectives"]) == set(OBJECTIVE_NAMES)
    exact_total = summary["reverse_kl_total"]
    assert exact_total > 0
    for name, row in summary["objectives"].items():
        total = math.fsum(s["objectives"][name] for s in a["steps"])
        assert row["total"] == pytest.approx(total)
        assert row["bias"] == pytest.approx(total - exact_total)
    assert summary["objectives"]["clipped_reverse_kl"]["clipped_share"] == pytest.approx(
        1 - summary["objectives"]["clipped_reverse_kl"]["total"] / exact_total
    )
    shares = [q for key, q in summary["quadrants"].items() if isinstance(q, dict)]
    assert sum(q["tokens"] for q in shares) == pytest.approx(1.0)
    assert sum(q["signal"] for q in shares) == pytest.approx(1.0)
    assert summary["quadrants"]["split"] == "median"
    assert exact_total > 0


def test_a_subset_of_objectives_and_bad_options(tiny, tmp_path):
    from support import tiny_settings
    from vrollout.errors import VRError
    from vrollout.pipeline.analyzer import Analyzer

    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    a = analyzer.analyze({"prompt": "abc", "response": "the cat", "objectives": ["k1", "jsd"]})
    assert set(a["steps"][0]["objectives"]) == {"k1", "jsd"}
    assert set(a["summary"]["objectives"]) == {"k1", "jsd"}
    for bad in ({"objectives": ["kl9"]}, {"jsd_beta": 1.5}, {"clip_tau": 0}, {"objective_k": 0}):
        with pytest.raises(VRError) as err:
            analyzer.analyze({"prompt": "abc", "response": "the cat", **bad})
        assert next(iter(bad)) in str(err.value)


def test_headline_has_a_row_block_per_objective_and_the_quadrants(tiny, tmp_path):
    """The dataset headline (and so the CLI folder's headline.csv) gets each objective's rows and
    TIP's quadrant shares, read from the analyses' digests."""
    from support import tiny_settings
    from vrollout.pipeline.analyzer import Analyzer
    from vrollout.pipeline.digest import digest
    from vrollout.report.headline import headline, headline_csv

    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    lines = [
        {"prompt": "abc", "privileged": "a mat", "response": text, "objectives": ["k1", "clipped_reverse_kl"]}
        for text in ("the cat sat", "a dog ran far away")
    ]
    analyses = [analyzer.analyze(line) for line in lines]
    table = headline(digest(a) for a in analyses)
    rows = {row["measure"]: row for row in table["rows"]}
    for name in ("k1", "clipped_reverse_kl"):
        for field in ("total", "bias", "spearman", "top5pct_overlap", "gini"):
            # a row's n: the analyses where the field is not null (spearman: null for a constant side)
            known = [a["summary"]["objectives"][name][field] for a in analyses]
            assert rows[f"{name}_{field}"]["cells"]["all"]["n"] == sum(v is not None for v in known) > 0
    assert "clipped_reverse_kl_clipped_share" in rows and "k1_clipped_share" not in rows
    assert "jsd_total" not in rows  # not asked for: no row
    want = sorted(a["summary"]["objectives"]["k1"]["total"] for a in analyses)
    assert rows["k1_total"]["cells"]["all"]["median"] == pytest.approx(sum(want) / 2)
    assert rows["low_entropy_high_divergence_signal"]["cells"]["all"]["n"] == 2
    assert "k1_spearman" in headline_csv(table)
