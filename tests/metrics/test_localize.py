"""Error localization's core: lines in, tokens to steps, thresholds by folds, and every metric
held to a direct computation (numpy, scikit-learn's roc_auc_score) on the predictions."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from support.tiny import tiny_tokenizer
from vrollout.errors import BadTrajectory
from vrollout.metrics.localization import (
    localization_line,
    recovery_drop,
    step_spans,
    token_offsets,
    token_steps,
)
from vrollout.metrics.localization_eval import (
    Setup,
    choose_threshold,
    fold_of,
    localization_metrics,
    predict,
    resamples,
)

LINE = {"id": "a", "prompt": "2+3*4?", "steps": ["3*4 = 12.", "2 + 12 = 15."], "label": 1}


def test_a_line_becomes_an_analysis_request_with_steps_and_label_in_meta():
    line = localization_line({**LINE, "meta": {"run": 3}})
    assert line["response"] == "3*4 = 12.\n\n2 + 12 = 15."
    assert line["meta"] == {"run": 3, "steps": LINE["steps"], "label": 1}
    assert "steps" not in line and "label" not in line
    chat = localization_line(
        {"messages": [{"role": "user", "content": "q"}], "steps": ["a", "b"], "label": -1}
    )
    assert chat["messages"][-1] == {"role": "assistant", "content": "a\n\nb"}
    trl = localization_line({"prompt": [{"role": "user", "content": "q"}], "steps": ["a"], "label": 0})
    assert trl["completion"] == [{"role": "assistant", "content": "a"}]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"label": 2}, "label must be -1 or a step index (0..1), got 2"),
        ({"label": -2}, "label must be at least -1, got -2"),
        ({"label": True}, "label must be an integer, got true"),
        ({"label": "1"}, 'label must be an integer, got "1"'),
        ({"steps": "one step"}, "steps must be a list"),
        ({"steps": ["ok", 3]}, "steps[1] must be a string, got 3"),
        ({"steps": []}, "steps"),
        ({"steps": ["ok", "  "]}, "steps[1] is empty"),
        ({"response": "x"}, "response: a localization line's response is its steps"),
        ({"prompt_ids": [1, 2]}, "prompt_ids: a localization line's response is its steps"),
    ],
)
def test_bad_lines_are_refused_with_the_field_named(change, words):
    with pytest.raises(BadTrajectory) as err:
        localization_line({**LINE, **change})
    assert words in err.value.message


def test_missing_label_and_an_assistant_message_are_refused():
    with pytest.raises(BadTrajectory, match="label is required"):
        localization_line({"prompt": "q", "steps": ["a"]})
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]
    with pytest.raises(BadTrajectory, match="no assistant message at the end"):
        localization_line({"messages": msgs, "steps": ["a"], "label": -1})


def test_tokens_map_to_steps_by_their_first_character_outside_a_separator():
    spans = step_spans(["ab", "cd", "ef"])  # "ab\n\ncd\n\nef"
    assert spans == [(0, 2), (4, 6), (8, 10)]
    offsets = [(0, 1), (1, 3), (3, 4), (4, 6), (6, 8), (7, 9), (9, 10), (10, 10)]
    # "a" | "b\n" straddles: starts in step 0 | "\n" separator only: step before | "cd" |
    # "\n\n" | "\ne" starts in the separator, runs into step 2 | "f" | an empty span at the end
    assert token_steps(offsets, spans) == [0, 0, 0, 1, 1, 2, 2, 2]


def test_offsets_from_the_tokenizer_equal_those_from_decoded_prefixes():
    tok = tiny_tokenizer()
    text = "Step 1: 3 * 4 = 12.\n\nStep 2: the answer is 12 — done."
    ids = tok(text, add_special_tokens=False)["input_ids"]

    class NoOffsets:  # a slow tokenizer: no offset mapping, only decoding
        def __call__(self, *args, **kwargs):
            raise NotImplementedError

        def decode(self, ids, **kwargs):
            return tok.decode(ids, **kwargs)

    fast = token_offsets(tok, text, ids)
    slow = token_offsets(NoOffsets(), text, ids)
    assert fast[-1][1] == len(text) and len(fast) == len(ids)
    assert token_steps(fast, step_spans(text.split("\n\n"))) == token_steps(
        slow, step_spans(text.split("\n\n"))
    )
    assert [a for a, _ in fast if a < 30] == [a for a, _ in slow if a < 30]  # before the "—": the same
    owner = token_steps(fast, step_spans(text.split("\n\n")))
    assert owner[0] == 0 and owner[-1] == 1 and sorted(owner) == owner


def test_recovery_drop_marks_the_step_after_which_the_answer_is_lost():
    owner = [0, 0, 1, 1, 2, 2]
    rec = {"points": [{"position": t, "success": t < 3} for t in range(6)], "student_success": False}
    assert recovery_drop(rec, owner, 3, 6) == [0.0, 1.0, 0.0]


# Metrics against direct computations ----------------------------------------------------------


def synthetic(n: int, seed: int) -> tuple[list[int], list[str], dict[str, list[list[float | None]]]]:
    rng = random.Random(seed)
    labels, problems, scores = [], [], {"a": [], "b": []}
    for i in range(n):
        steps = rng.randint(1, 7)
        label = -1 if rng.random() < 0.4 else rng.randrange(steps)
        labels.append(label)
        problems.append(f"p{i // 2}")  # two lines per problem
        for name in scores:
            line = [round(rng.random(), 1) for _ in range(steps)]  # rounded: ties happen
            if label >= 0 and name == "a":
                line[label] += 0.5  # a scorer with some signal
            if rng.random() < 0.1:
                line[0] = None  # a step with no token
            scores[name].append(line)
    return labels, problems, scores


def f1_direct(labels, predicted) -> tuple[float, float, float]:
    labels, predicted = np.array(labels), np.array(predicted)
    err, cor = labels >= 0, labels < 0
    acc_error = float(np.mean(predicted[err] == labels[err]))
    acc_correct = float(np.mean(predicted[cor] == -1))
    f1 = 0.0 if acc_error + acc_correct == 0 else 2 * acc_error * acc_correct / (acc_error + acc_correct)
    return f1, acc_error, acc_correct


def auroc_direct(labels, scores) -> float:
    """scikit-learn on the pooled label steps (1) and the steps before them (0)."""
    y, s = [], []
    for label, line in zip(labels, scores, strict=True):
        if label < 0:
            continue
        for j in range(label + 1):
            if line[j] is not None:
                y.append(int(j == label))
                s.append(line[j])
    return float(roc_auc_score(y, s))


def best_threshold_brute(labels, scores) -> float:
    """Every candidate tried in turn, F1 from the predictions themselves."""
    candidates = sorted({s for line in scores for s in line if s is not None}) + [math.inf]
    best, best_f1 = None, -1.0
    for c in candidates:
        f1 = f1_direct(labels, [predict(line, c) for line in scores])[0]
        if f1 >= best_f1:
            best, best_f1 = c, f1
    return best


def test_the_threshold_search_equals_trying_every_candidate():
    for seed in range(5):
        labels, _, scores = synthetic(40, seed)
        for name in scores:
            assert choose_threshold(labels, scores[name]) == best_threshold_brute(labels, scores[name])


def test_every_metric_equals_a_direct_computation_on_the_predictions():
    labels, problems, scores = synthetic(60, 1)
    setup = Setup(folds=4, seed=3, bootstrap=200)
    metrics, predicted, folds = localization_metrics(labels, problems, scores, setup)
    assert folds == fold_of(problems, 4, 3)
    for name in [*scores, "position"]:
        per_line = scores.get(name) or [[float(j) for j in range(len(s))] for s in scores["a"]]
        m = metrics[name] if name != "position" else metrics["baselines"]["position"]
        # Each line's prediction uses the threshold chosen on the other folds only.
        for f in range(4):
            train = [i for i in range(60) if folds[i] != f]
            t = best_threshold_brute([labels[i] for i in train], [per_line[i] for i in train])
            assert m["fold_thresholds"][f] == (None if math.isinf(t) else t)
            for i in range(60):
                if folds[i] == f:
                    assert predicted[name][i] == predict(per_line[i], t)
        f1, acc_error, acc_correct = f1_direct(labels, predicted[name])
        assert m["f1"] == pytest.approx(f1) and m["acc_error"] == pytest.approx(acc_error)
        assert m["acc_correct"] == pytest.approx(acc_correct)
        assert m["auroc"] == pytest.approx(auroc_direct(labels, per_line))
    n = [len(s) for s in scores["a"]]
    chance = metrics["baselines"]["chance"]
    err = np.mean([1 / (k + 1) for k, lab in zip(n, labels, strict=True) if lab >= 0])
    cor = np.mean([1 / (k + 1) for k, lab in zip(n, labels, strict=True) if lab < 0])
    assert chance["acc_error"] == pytest.approx(err) and chance["acc_correct"] == pytest.approx(cor)
    assert chance["f1"] == pytest.approx(2 * err * cor / (err + cor)) and chance["auroc"] == 0.5


def test_intervals_are_percentiles_over_resampled_lines():
    labels, problems, scores = synthetic(30, 2)
    setup = Setup(folds=3, seed=7, bootstrap=100)
    metrics, predicted, _ = localization_metrics(labels, problems, scores, setup)
    weights = resamples(len(labels), setup)
    f1s, aurocs = [], []
    for row in weights.astype(int):
        drawn = [i for i, count in enumerate(row) for _ in range(count)]
        lab = [labels[i] for i in drawn]
        if any(x >= 0 for x in lab) and any(x < 0 for x in lab):
            f1s.append(f1_direct(lab, [predicted["a"][i] for i in drawn])[0])
        aurocs.append(auroc_direct(lab, [scores["a"][i] for i in drawn]))
    assert metrics["a"]["f1_interval"] == pytest.approx(list(np.percentile(f1s, [2.5, 97.5])))
    assert metrics["a"]["auroc_interval"] == pytest.approx(list(np.percentile(aurocs, [2.5, 97.5])))


def test_folds_keep_a_problem_together_and_follow_the_seed():
    problems = [f"p{i % 7}" for i in range(30)]
    folds = fold_of(problems, 5, 0)
    assert all(folds[i] == folds[j] for i in range(30) for j in range(30) if problems[i] == problems[j])
    assert folds == fold_of(problems, 5, 0) and set(folds) == set(range(5))
    assert fold_of(problems, 5, 0) != fold_of(problems, 5, 1)
    with pytest.raises(BadTrajectory, match="at least 2 problems"):
        fold_of(["same"] * 4, 5, 0)
