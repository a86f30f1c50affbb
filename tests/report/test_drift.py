"""The drift table's order and grouping rules (report/drift.py), on digests."""

from __future__ import annotations

from vrollout.report.drift import drift_csv, drift_figures, drift_rows


def d(step, tokens=4, divergences=1, kl=1.0, at_div=0.5, first=0, correct=None, score=None) -> dict:
    return {
        "step": step, "tokens": tokens, "divergences": divergences, "reverse_kl_total": kl,
        "reverse_kl_at_divergences": at_div, "first_divergence": first, "correct": correct, "score": score,
    }  # fmt: skip


def test_checkpoint_names_keep_their_first_seen_order_and_numbers_sort_as_numbers():
    names = drift_rows([d("ckpt-b"), d("ckpt-a"), d("ckpt-b"), d(None)])
    assert [(r["step"], r["trajectories"]) for r in names] == [("ckpt-b", 2), ("ckpt-a", 1)]
    assert drift_figures(names)["drift_length"]["layout"]["xaxis"]["type"] == "category"
    numbers = drift_rows([d(100), d("20"), d(3), d(20)])  # "20" and 20 are one step
    assert [(r["step"], r["trajectories"]) for r in numbers] == [(3, 1), (20, 2), (100, 1)]
    # integer steps are categories too (#28): no tick at step 1.5, and each step evenly apart
    assert drift_figures(numbers)["drift_length"]["layout"]["xaxis"]["type"] == "category"
    assert drift_figures(numbers)["drift_length"]["data"][0]["x"] == ["3", "20", "100"]
    assert drift_rows([d(None)]) == [] and drift_figures([]) == {}


def test_pooled_rates_and_nulls():
    first = d(1, tokens=4, divergences=1, kl=2.0, at_div=1.5, correct=True, score=1.0)
    second = d(1, tokens=6, divergences=0, kl=0.0, at_div=0.0, first=None, correct=False)
    (row,) = drift_rows([first, second])
    assert row["agreement_rate"] == 0.9 and row["reverse_kl_mean"] == 0.2
    assert row["reverse_kl_share_at_divergences"] == 0.75 and row["diverged_share"] == 0.5
    assert (row["verdicts"], row["correct_share"], row["score_mean"]) == (2, 0.5, 1.0)
    (zero,) = drift_rows([d("x", kl=0.0, at_div=0.0, first=None)])
    assert zero["reverse_kl_share_at_divergences"] is None and zero["first_divergence_median"] is None
    assert [t["name"] for t in drift_figures([zero])["drift_agreement"]["data"]] == ["agreement rate"]


def test_a_step_name_that_looks_like_a_formula_is_quoted_in_the_csv():
    assert "\r\n'=cmd,1," in drift_csv(drift_rows([d("=cmd")]))
