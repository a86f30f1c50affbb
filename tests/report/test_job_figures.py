"""The job page's figures (#28, "Figures that are right"): groups side by side, whole-number
count axes, every axis labelled, legends in a band of their own, step names escaped."""

from __future__ import annotations

import pytest
from support.synthetic import synthetic_analysis
from vrollout.pipeline.digest import digest
from vrollout.report.chart import count_axis
from vrollout.report.dataset import figures_of, histogram_bars
from vrollout.report.drift import drift_figures, drift_rows


def digests(n: int = 12) -> list[dict]:
    """Right and wrong trajectories of several lengths, two training steps."""
    out = []
    for i in range(n):
        a = synthetic_analysis(20 + 9 * i, top_k=2, seed=i, reference_answer="42",
                               response_text="the answer is 42" if i % 3 else "it is 41")  # fmt: skip
        a["trajectory"]["step"] = 10 * (1 + i % 2)
        out.append(digest(a))
    return out


def bar_span(trace: dict, i: int) -> tuple[float, float]:
    start = trace["x"][i] + trace["offset"]
    return start, start + trace["width"][i]


def test_first_divergence_groups_share_bins_and_sit_side_by_side():
    figure = figures_of(digests())["first_divergence"]
    right, wrong = figure["data"]
    assert right["name"].startswith("correct") and wrong["name"].startswith("incorrect")
    assert right["x"] == wrong["x"]  # the same bins, whatever each group's largest value
    assert sum(right["y"]) + sum(wrong["y"]) == sum(1 for d in digests() if d["first_divergence"] is not None)
    for i in range(len(right["x"])):
        a, b = bar_span(right, i), bar_span(wrong, i)
        assert a[1] <= b[0] + 1e-9, "the incorrect bar starts where the correct one ends: both visible"
    assert figure["layout"]["barmode"] == "group"


def test_histogram_bins_cover_their_integers():
    alone = histogram_bars([0, 3], "x", "#000")  # width 1: the bar is centred on its value
    assert bar_span(alone, 3) == pytest.approx((2.55, 3.45))
    wide = histogram_bars([0, 99], "x", "#000", slot=1, slots=2)  # width 5: bins 0–4, 5–9, ...
    assert wide["x"][:2] == [0, 5] and wide["customdata"][:2] == ["0–4", "5–9"]
    lo, hi = bar_span(wide, 0)
    assert lo >= -0.5 and hi <= 4.5 and lo > 1.5  # the second slot: the right half of the bin
    assert histogram_bars([2], "x", "#000", top=9)["x"] == list(range(10))  # a shared top


@pytest.mark.parametrize(
    ("largest", "dtick"), [(0, 1), (1, 1), (4, 1), (7, 2), (12, 5), (60, 20), (480, 100)]
)
def test_count_axes_tick_whole_numbers(largest, dtick):
    axis = count_axis(largest)
    assert axis["dtick"] == dtick and axis["tickformat"] == "d" and axis["range"][0] == 0


def test_every_dataset_figure_labels_its_axes_and_keeps_its_legend_off_the_plot():
    figures = figures_of(digests())
    assert {"drift_agreement", "drift_length", "drift_reverse_kl"} <= set(figures)
    for key, figure in figures.items():
        layout = figure["layout"]
        assert layout["xaxis"]["title"]["text"] and layout["yaxis"]["title"]["text"], key
        legend = layout["legend"]
        # below the x axis title, in the figure's own bottom margin: never over the data
        assert (legend["yref"], legend["y"], legend["yanchor"]) == ("container", 0, "bottom"), key
        assert layout["margin"]["b"] >= 90, key
    assert figures["first_divergence"]["layout"]["yaxis"]["tickformat"] == "d"


def test_drift_steps_are_categories_and_their_names_escaped():
    line = {"tokens": 4, "divergences": 1, "reverse_kl_total": 1.0, "first_divergence": 0}
    rows = drift_rows([{**line, "step": s} for s in (2, 1, "<b>x</b>")])
    figure = drift_figures(rows)["drift_agreement"]
    assert figure["layout"]["xaxis"]["type"] == "category"
    assert figure["data"][0]["x"] == ["2", "1", "&lt;b&gt;x&lt;/b&gt;"]


def test_the_position_axis_ticks_whole_tokens_and_shows_every_bin():
    figures = figures_of(digests())
    axis = figures["first_divergence"]["layout"]["xaxis"]
    last = figures["first_divergence"]["data"][0]["x"][-1]
    assert axis["tickformat"] == "d" and isinstance(axis["dtick"], int) and axis["dtick"] >= 1
    assert axis["range"][0] == -0.5 and axis["range"][1] >= last + 0.5
    assert figures["agreement"]["layout"]["yaxis"]["range"] == [-0.03, 1.03]  # a rate, never -100%


def test_lines_without_a_verdict_stay_in_the_figures_beside_the_split():
    """Some lines judged, some not: "all" comes first, so no trajectory is missing."""
    judged = digests(4)
    unjudged = [digest(synthetic_analysis(30, top_k=2, seed=40 + i)) for i in range(3)]
    assert all(d["correct"] is None for d in unjudged)
    figures = figures_of(judged + unjudged)
    names = [t["name"] for t in figures["kl_gini"]["data"]]
    right = sum(1 for d in judged if d["correct"])
    assert names == ["all (7)", f"correct ({right})", f"incorrect ({4 - right})"]
    first = figures["first_divergence"]["data"]
    assert sum(first[0]["y"]) == sum(1 for d in judged + unjudged if d["first_divergence"] is not None)
    assert [t["name"] for t in figures_of(judged)["kl_gini"]["data"]][0].startswith("correct")
