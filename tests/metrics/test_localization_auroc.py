"""The AUROC of error localization (docs/metrics.md: per line the label step's score against the
steps before it, pooled over lines, ties one half), computed by ranks, equals the pairwise
definition it replaced (a lines x lines matrix of won pairs, kept here as the reference)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from vrollout.metrics import localization_eval
from vrollout.metrics.localization_eval import AurocPairs, Setup, resample_chunks, resamples


def naive_auroc(labels, scores, weights: np.ndarray) -> np.ndarray:
    """The old O(m^2) computation: wins[i, j] over the m lines with an error."""
    lines = np.array([i for i, label in enumerate(labels) if label >= 0], dtype=int)
    m = len(lines)
    pos = np.full(m, np.nan)
    neg_values, neg_owners = [], []
    for k, i in enumerate(lines):
        label, line = labels[i], scores[i]
        if line[label] is not None:
            pos[k] = line[label]
        for s in line[:label]:
            if s is not None:
                neg_values.append(s)
                neg_owners.append(k)
    negs, owners = np.array(neg_values, dtype=float), np.array(neg_owners, dtype=int)
    wins = np.zeros((m, m))
    for k in np.flatnonzero(~np.isnan(pos)):
        credit = (negs < pos[k]) + 0.5 * (negs == pos[k])
        wins[k] = np.bincount(owners, weights=credit, minlength=m)
    positives = (~np.isnan(pos)).astype(float)
    negatives = np.bincount(owners, minlength=m).astype(float)
    w = weights[:, lines]
    num = np.einsum("bi,ij,bj->b", w, wins, w)
    den = (w @ positives) * (w @ negatives)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def random_lines(n: int, seed: int) -> tuple[list[int], list[list[float | None]]]:
    rng = random.Random(seed)
    labels, scores = [], []
    for _ in range(n):
        steps = rng.randint(1, 9)
        label = -1 if rng.random() < 0.3 else rng.randrange(steps)
        line: list[float | None] = [round(rng.random(), 1) for _ in range(steps)]  # ties happen
        if label >= 0 and rng.random() < 0.5:
            line[label] = (line[label] or 0) + 0.3
        for j in range(steps):
            if rng.random() < 0.08:
                line[j] = None  # a step with no token
        labels.append(label)
        scores.append(line)
    return labels, scores


@pytest.mark.parametrize("seed", range(6))
def test_rank_auroc_equals_the_pairwise_matrix(seed):
    labels, scores = random_lines(80, seed)
    weights = np.vstack([np.ones((1, 80)), resamples(80, Setup(seed=seed, bootstrap=300))])
    got = AurocPairs.of(labels, scores).auroc(weights)
    want = naive_auroc(labels, scores, weights)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-12, atol=1e-12)


def test_no_positive_or_no_negative_is_undefined():
    weights = np.ones((1, 2))
    assert np.isnan(AurocPairs.of([-1, -1], [[0.1], [0.2]]).auroc(weights)).all()  # no error line
    assert np.isnan(AurocPairs.of([0, 0], [[0.1], [0.2]]).auroc(weights)).all()  # no step before
    assert np.isnan(AurocPairs.of([1], [[0.1, None]]).auroc(weights)).all()  # label step unscored


def test_resamples_in_blocks_are_the_same_rows(monkeypatch):
    monkeypatch.setattr(localization_eval, "CHUNK_CELLS", 7 * 40)  # blocks of 7 rows
    setup = Setup(seed=5, bootstrap=50)
    blocks = list(resample_chunks(40, setup))
    assert [len(b) for b in blocks] == [7] * 7 + [1]
    whole = np.random.default_rng(5).multinomial(40, np.full(40, 1 / 40), size=50).astype(float)
    assert np.array_equal(np.vstack(blocks), whole) and np.array_equal(resamples(40, setup), whole)


def test_auroc_in_blocks_equals_one_block(monkeypatch):
    labels, scores = random_lines(60, 9)
    weights = resamples(60, Setup(seed=1, bootstrap=40))
    whole = AurocPairs.of(labels, scores).auroc(weights)
    monkeypatch.setattr(localization_eval, "CHUNK_CELLS", 50)  # a few rows at a time
    assert np.allclose(
        AurocPairs.of(labels, scores).auroc(weights), whole, rtol=0, atol=1e-15, equal_nan=True
    )
