"""Error localization, part two: thresholds by cross-validation, metrics, baselines, intervals.

Input: per line a label (earliest wrong step, or -1), a problem key (lines of one problem share
a fold) and each scorer's score per step (None: no score, never passes). A scorer predicts the
earliest step whose score is at least its threshold, else -1. Each fold's threshold is chosen
on the other folds only (the one that maximises F1 there), so no line is scored with a
threshold fitted on it. The definitions are docs/metrics.md's ("Error localization"). numpy
only; no torch, no HTTP.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from vrollout.errors import BadTrajectory

METRICS = ("f1", "acc_error", "acc_correct", "auroc")
Scores = Sequence[Sequence[float | None]]  # per line, per step
CHUNK_CELLS = 1 << 20  # resamples x lines (or x scored steps) held at once: about 8 MB per array


@dataclass(frozen=True)
class Setup:
    folds: int = 5
    seed: int = 0
    bootstrap: int = 1000  # resamples of the lines for each 95% interval


def fold_of(problems: Sequence[str], folds: int, seed: int) -> list[int]:
    """Each line's fold: the problems (in order of first appearance) shuffled with `seed` and
    dealt round-robin into min(folds, problems) folds."""
    order = list(dict.fromkeys(problems))
    if len(order) < 2:
        raise BadTrajectory("cross-validation needs lines of at least 2 problems (different prompts)")
    random.Random(seed).shuffle(order)
    k = min(folds, len(order))
    where = {p: i % k for i, p in enumerate(order)}
    return [where[p] for p in problems]


def _array(scores: Sequence[float | None]) -> np.ndarray:
    return np.array([-np.inf if s is None else s for s in scores], dtype=float)


def predict(scores: Sequence[float | None], threshold: float) -> int:
    """The earliest step whose score is at least `threshold`, else -1 (also for threshold inf)."""
    if math.isinf(threshold):
        return -1
    hits = np.flatnonzero(_array(scores) >= threshold)
    return int(hits[0]) if hits.size else -1


def harmonic(a: float | None, b: float | None) -> float | None:
    """F1 of two accuracies; None where either is undefined (no lines of that kind)."""
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def choose_threshold(labels: Sequence[int], scores: Scores) -> float:
    """The threshold that maximises F1 on these lines (where one kind of line is missing, the
    other kind's accuracy); among equals, the largest. Candidates: every score, and inf (never
    predict an error). A line with label L is right for thresholds in (max of scores before L,
    score of L]; a line with label -1 for thresholds above its largest score."""
    finite = sorted({s for line in scores for s in line if s is not None})
    candidates = np.array([*finite, np.inf])
    err_hits = np.zeros(len(candidates) + 1)
    cor_hits = np.zeros(len(candidates) + 1)
    n_err = n_cor = 0
    for label, line in zip(labels, scores, strict=True):
        values = _array(line)
        if label >= 0:
            n_err += 1
            lo = values[:label].max() if label else -np.inf
            hi = values[label]
            if hi > lo:  # candidates c with lo < c <= hi
                a = np.searchsorted(candidates, lo, side="right")
                b = np.searchsorted(candidates, hi, side="right")
                err_hits[a] += 1
                err_hits[b] -= 1
        else:
            n_cor += 1
            a = np.searchsorted(candidates, values.max(), side="right")
            cor_hits[a] += 1
    acc_err = np.cumsum(err_hits)[:-1] / n_err if n_err else None
    acc_cor = np.cumsum(cor_hits)[:-1] / n_cor if n_cor else None
    if acc_err is not None and acc_cor is not None:
        total = acc_err + acc_cor
        objective = np.divide(2 * acc_err * acc_cor, total, out=np.zeros_like(total), where=total > 0)
    else:
        objective = acc_err if acc_err is not None else acc_cor
    assert objective is not None
    best = np.flatnonzero(objective == objective.max())
    return float(candidates[best[-1]])


def cross_validate(
    labels: Sequence[int], scores: Scores, folds: Sequence[int]
) -> tuple[list[int], list[float]]:
    """Each line's prediction with the threshold chosen on the other folds; the folds' thresholds."""
    k = max(folds) + 1
    thresholds = []
    predicted = [0] * len(labels)
    for f in range(k):
        train = [i for i, g in enumerate(folds) if g != f]
        threshold = choose_threshold([labels[i] for i in train], [scores[i] for i in train])
        thresholds.append(threshold)
        for i, g in enumerate(folds):
            if g == f:
                predicted[i] = predict(scores[i], threshold)
    return predicted, thresholds


# Metrics, for one set of line weights (all ones: the data; bootstrap counts: a resample) -------


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


@dataclass
class AurocPairs:
    """The label steps (positives) against the steps before them (negatives), pooled over the
    lines with an error: for a row of line weights, AUROC = the weighted share of (positive,
    negative) pairs where the positive scores higher, ties counting one half (Mann-Whitney with
    midranks). Cost: one sort of the negatives, then per resample a cumulative sum over them and
    a look-up per positive, so n log n once and linear per resample (never a lines x lines matrix).
    `pos_owner`, `neg_owner`: the line of each positive and each negative (negatives sorted by
    score); `below[k]`, `upto[k]`: how many negatives score < and <= positive k."""

    pos_owner: np.ndarray
    neg_owner: np.ndarray
    below: np.ndarray
    upto: np.ndarray

    @classmethod
    def of(cls, labels: Sequence[int], scores: Scores) -> AurocPairs:
        pos_values, pos_owner, neg_values, neg_owner = [], [], [], []
        for i, label in enumerate(labels):
            if label < 0:
                continue
            line = scores[i]
            if line[label] is not None:
                pos_values.append(line[label])
                pos_owner.append(i)
            for s in line[:label]:
                if s is not None:
                    neg_values.append(s)
                    neg_owner.append(i)
        negs = np.array(neg_values, dtype=float)
        order = np.argsort(negs, kind="stable")
        negs = negs[order]
        pos = np.array(pos_values, dtype=float)
        return cls(
            np.array(pos_owner, dtype=int),
            np.array(neg_owner, dtype=int)[order],
            np.searchsorted(negs, pos, side="left"),
            np.searchsorted(negs, pos, side="right"),
        )

    def auroc(self, weights: np.ndarray) -> np.ndarray:
        """For each row of line weights (resamples x lines): the weighted share of won pairs."""
        rows = max(1, CHUNK_CELLS // (len(self.neg_owner) + 1))
        parts = [self._auroc(weights[i : i + rows]) for i in range(0, len(weights), rows)]
        return np.concatenate([np.zeros(0), *parts])

    def _auroc(self, weights: np.ndarray) -> np.ndarray:
        w_pos, w_neg = weights[:, self.pos_owner], weights[:, self.neg_owner]
        # cum[:, c]: the weight of the c lowest-scoring negatives (cum[:, 0] = 0)
        cum = np.zeros((len(weights), len(self.neg_owner) + 1))
        np.cumsum(w_neg, axis=1, out=cum[:, 1:])
        lower, tied = cum[:, self.below], cum[:, self.upto] - cum[:, self.below]
        num = (w_pos * (lower + 0.5 * tied)).sum(1)
        den = w_pos.sum(1) * w_neg.sum(1)
        return _ratio(num, den)


def _metrics(
    weights: np.ndarray, labels: np.ndarray, hits: np.ndarray, pairs: AurocPairs | None
) -> dict[str, np.ndarray]:
    err, cor = labels >= 0, labels < 0
    acc_error = _ratio(weights[:, err] @ hits[err], weights[:, err].sum(1))
    acc_correct = _ratio(weights[:, cor] @ hits[cor], weights[:, cor].sum(1))
    total = acc_error + acc_correct
    f1 = np.divide(
        2 * acc_error * acc_correct, total, out=np.where(np.isnan(total), np.nan, 0.0), where=total > 0
    )
    auroc = pairs.auroc(weights) if pairs is not None else np.full(len(weights), np.nan)
    return {"f1": f1, "acc_error": acc_error, "acc_correct": acc_correct, "auroc": auroc}


def _number(x: float) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else float(x)


def _interval(values: np.ndarray) -> list[float | None]:
    values = values[~np.isnan(values)]
    if not values.size:
        return [None, None]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def resamples(lines: int, setup: Setup) -> np.ndarray:
    """Bootstrap weights (resamples x lines): how often each line is drawn, seeded."""
    return np.concatenate([*resample_chunks(lines, setup), np.zeros((0, lines))])


def resample_chunks(lines: int, setup: Setup) -> Iterator[np.ndarray]:
    """`resamples`, a block of rows at a time (the same rows: each row is one draw of the seeded
    generator), so that no resamples x lines matrix is ever held whole."""
    rng = np.random.default_rng(setup.seed)
    rows = max(1, CHUNK_CELLS // max(lines, 1))
    for start in range(0, setup.bootstrap, rows):
        size = min(rows, setup.bootstrap - start)
        yield rng.multinomial(lines, np.full(lines, 1.0 / lines), size=size).astype(float)


def evaluate(
    labels: Sequence[int],
    predicted: Sequence[int],
    scores: Scores | None,
    weights: Iterable[np.ndarray],
) -> dict[str, Any]:
    """The four metrics of these predictions, each with its bootstrap 95% interval
    (`<metric>_interval`: the 2.5th and 97.5th percentiles over the resamples). `weights`: the
    resamples' line weights, in blocks of rows (`resample_chunks`)."""
    lab = np.array(labels)
    hits = (np.array(predicted) == lab).astype(float)
    pairs = AurocPairs.of(labels, scores) if scores is not None else None
    point = _metrics(np.ones((1, len(lab))), lab, hits, pairs)
    blocks = [_metrics(block, lab, hits, pairs) for block in weights]
    out: dict[str, Any] = {}
    for name in METRICS:
        boot = np.concatenate([np.zeros(0), *(block[name] for block in blocks)])
        out[name] = _number(point[name][0])
        out[f"{name}_interval"] = _interval(boot)
    return out


def chance(labels: Sequence[int], steps: Sequence[int]) -> dict[str, float | None]:
    """A guess uniform over each line's n+1 answers (a step, or -1): its expected accuracies,
    their F1, and an AUROC of 0.5."""
    err = [1 / (n + 1) for label, n in zip(labels, steps, strict=True) if label >= 0]
    cor = [1 / (n + 1) for label, n in zip(labels, steps, strict=True) if label < 0]
    acc_error = sum(err) / len(err) if err else None
    acc_correct = sum(cor) / len(cor) if cor else None
    return {
        "f1": harmonic(acc_error, acc_correct),
        "acc_error": acc_error,
        "acc_correct": acc_correct,
        "auroc": 0.5,
    }


def localization_metrics(
    labels: Sequence[int],
    problems: Sequence[str],
    scores: dict[str, Scores],
    setup: Setup,
) -> tuple[dict[str, Any], dict[str, list[int]], list[int]]:
    """(metrics.json, each scorer's predictions, each line's fold). Every scorer and the
    position-only baseline (score = the step's index) go through the same folds; the intervals
    of all come from the same resamples (drawn again per scorer from the same seed, a block at
    a time)."""
    for i, (label, line) in enumerate(zip(labels, next(iter(scores.values())), strict=True)):
        if not -1 <= label < len(line):
            raise BadTrajectory(f"line {i + 1}: label {label} is outside -1..{len(line) - 1}")
    folds = fold_of(problems, setup.folds, setup.seed)
    steps = [len(line) for line in next(iter(scores.values()))]
    position = [[float(j) for j in range(n)] for n in steps]
    metrics: dict[str, Any] = {}
    predictions: dict[str, list[int]] = {}
    for name, per_line in [*scores.items(), ("position", position)]:
        predicted, thresholds = cross_validate(labels, per_line, folds)
        entry = evaluate(labels, predicted, per_line, resample_chunks(len(labels), setup))
        entry["threshold"] = _number(choose_threshold(labels, per_line))
        entry["fold_thresholds"] = [_number(t) for t in thresholds]
        predictions[name] = predicted
        metrics[name] = entry
    position_entry = metrics.pop("position")
    metrics["baselines"] = {"chance": chance(labels, steps), "position": position_entry}
    return metrics, predictions, folds
