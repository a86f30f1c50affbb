"""Dataset helpers: pure functions, tested on their numbers."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from support.synthetic import synthetic_analysis
from vrollout.pipeline.assembly import summarize
from vrollout.pipeline.digest import (
    SUMMARY_COLUMNS,
    decile_shares,
    digest,
    is_current,
    summary_of,
    summary_row,
)
from vrollout.report.dataset import figures_of, histogram_bars, summaries_csv
from vrollout.report.headline import cell, headline, headline_csv, headline_latex, headline_markdown


def test_decile_shares_sum_to_one_and_place_the_signal():
    steps = [{"reverse_kl": 0.0}] * 19 + [{"reverse_kl": 2.0}]
    shares = decile_shares({"steps": steps})
    assert shares[-1] == pytest.approx(1.0) and sum(shares) == pytest.approx(1.0)
    assert decile_shares({"steps": [{"reverse_kl": 0.0}] * 3}) is None
    short = decile_shares({"steps": [{"reverse_kl": 1.0}] * 3})
    assert sum(short) == pytest.approx(1.0) and short.count(0.0) == 7


def test_histogram_bars():
    bars = histogram_bars([0, 1, 1, 5, 39], "x", "#000", bins=20)
    assert bars["x"][:3] == [0, 2, 4] and sum(bars["y"]) == 5
    assert bars["y"][0] == 3 and bars["y"][2] == 1 and bars["y"][-1] == 1
    assert histogram_bars([], "x", "#000")["y"] == [0]


def digests_of_a_mixed_dataset() -> list[dict]:
    """Twelve synthetic trajectories: some right, some wrong, some without a reference; a few
    carrying the teachability and surface/fork counts, as analyses with continuations do."""
    out = []
    for n in range(12):
        a = synthetic_analysis(20 + 7 * n, top_k=2, seed=n, reference_answer=None if n % 4 == 3 else "42",
                               response_text="the answer is 42" if n % 3 else "it is 41")  # fmt: skip
        if n % 2:  # the per-analysis fields, on some analyses only
            divergences = a["summary"]["divergences"]
            a["summary"].update(
                teacher_mass_on_student_topk_mean=0.5 + n / 100,
                divergences_in_student_topk=divergences // 2,
                divergences_classified=divergences,
                divergences_surface=divergences // 3,
                divergences_fork=divergences - divergences // 3,
                forks_that_matter=None,
            )
        out.append(digest(a))
    return out


def test_digest_carries_concentration_and_the_per_analysis_fields():
    a = synthetic_analysis(40, top_k=2, seed=3)
    d = digest(a)
    kl = np.array([s["reverse_kl"] for s in a["steps"]])
    largest = np.sort(kl)[::-1]
    assert d["kl_top_5pct"] == pytest.approx(largest[:2].sum() / kl.sum())  # ceil(0.05 · 40) = 2
    assert d["kl_top_20pct"] == pytest.approx(largest[:8].sum() / kl.sum())
    pairs = np.abs(kl[:, None] - kl[None, :]).sum()
    assert d["kl_gini"] == pytest.approx(pairs / (2 * len(kl) * kl.sum()))
    adv = np.abs([s["advantage"] for s in a["steps"]])
    assert d["abs_advantage_top_5pct"] == pytest.approx(np.sort(adv)[::-1][:2].sum() / adv.sum())
    assert d["teacher_mass_on_student_topk_mean"] is None and d["divergences_surface"] is None
    assert summary_of(d)["kl_gini"] == d["kl_gini"] and set(summary_of(d)) == set(SUMMARY_COLUMNS)


def test_an_analysis_stored_before_concentration_gets_it_from_its_steps():
    a = synthetic_analysis(30, top_k=2, seed=5)
    del a["summary"]["concentration"], a["summary"]["concentration_abs_advantage"]
    assert summary_row(a)["kl_gini"] == pytest.approx(summarize(a["steps"])["concentration"]["gini"])
    assert summary_row(a)["abs_advantage_top_5pct"] is not None


def test_old_digests_read_with_nulls_never_a_key_error():
    old = {k: v for k, v in digest(synthetic_analysis(10, top_k=1)).items() if k in OLD_DIGEST_KEYS}
    row = summary_of(old)
    assert row["kl_top_5pct"] is None and row["divergences_fork"] is None and row["tokens"] == 10
    assert not is_current(old) and is_current(digest(synthetic_analysis(10, top_k=1)))
    figures_of([old, old])  # no KeyError
    table = headline([old])
    assert [r["measure"] for r in table["rows"]] == [
        "reverse_kl_mean",
        "agreement_rate",
        "divergences_per_100_tokens",
    ]


OLD_DIGEST_KEYS = {
    "analysis_id", "line", "trajectory_id", "tokens", "agreement_rate", "divergences", "first_divergence",
    "reverse_kl_total", "reverse_kl_mean", "forward_kl_total", "advantage_total", "correct", "preview",
    "kl_bins", "deciles",
}  # fmt: skip


def iqr(values: list[float]) -> tuple[int, float, float, float]:
    x = np.array(values, dtype=float)
    return len(x), float(np.median(x)), float(np.percentile(x, 25)), float(np.percentile(x, 75))


def test_headline_is_the_median_and_quartiles_numpy_computes():
    digests = digests_of_a_mixed_dataset()
    table = headline(digests)
    assert [g["name"] for g in table["groups"]] == ["all", "correct", "incorrect"]
    groups = {
        "all": digests,
        "correct": [d for d in digests if d["correct"] is True],
        "incorrect": [d for d in digests if d["correct"] is False],
    }
    assert [g["trajectories"] for g in table["groups"]] == [len(v) for v in groups.values()]
    direct = {
        "kl_top_5pct": lambda d: d["kl_top_5pct"],
        "kl_gini": lambda d: d["kl_gini"],
        "abs_advantage_gini": lambda d: d["abs_advantage_gini"],
        "agreement_rate": lambda d: d["agreement_rate"],
        "divergences_per_100_tokens": lambda d: 100 * d["divergences"] / d["tokens"],
        "divergences_in_student_topk_share": lambda d: (
            d["divergences_in_student_topk"] / d["divergences"]
            if d["divergences_in_student_topk"] is not None
            else None
        ),
        "surface_share": lambda d: (
            d["divergences_surface"] / d["divergences_classified"] if d["divergences_classified"] else None
        ),
        "divergences_fork": lambda d: d["divergences_fork"],
    }
    rows = {r["measure"]: r for r in table["rows"]}
    for measure, value in direct.items():
        for group, members in groups.items():
            values = [v for d in members if (v := value(d)) is not None]
            cell = rows[measure]["cells"][group]
            assert (cell["n"], cell["median"], cell["q1"], cell["q3"]) == pytest.approx(iqr(values)), measure
    assert "forks_that_matter" not in rows  # null everywhere: no row
    assert (
        rows["divergences_fork"]["cells"]["all"]["n"] == 6
        and "(n=6)" in rows["divergences_fork"]["cells"]["all"]["text"]
    )


def test_headline_renderings_hold_the_same_numbers():
    table = headline(digests_of_a_mixed_dataset())
    parsed = list(csv.DictReader(io.StringIO(headline_csv(table), newline="")))
    assert [r["measure"] for r in parsed] == [r["measure"] for r in table["rows"]]
    for got, row in zip(parsed, table["rows"], strict=True):
        for g in ("all", "correct", "incorrect"):
            assert float(got[f"{g}_median"]) == pytest.approx(row["cells"][g]["median"])
            assert int(got[f"{g}_n"]) == row["cells"][g]["n"]
    md = headline_markdown(table).splitlines()
    assert md[0] == "| measure | all (n=12) | correct (n=6) | incorrect (n=3) |"
    top5 = next(r for r in table["rows"] if r["measure"] == "kl_top_5pct")["cells"]["all"]
    assert f"{100 * top5['median']:.1f}% [{100 * top5['q1']:.1f}–{100 * top5['q3']:.1f}%]" in md[3]
    assert any(r"\|advantage\|" in line for line in md)  # a pipe in a label cannot split the row
    tex = headline_latex(table)
    assert (
        tex.startswith(r"\begin{tabular}{lrrr}")
        and r"top 5\% of tokens" in tex
        and "|" not in tex.replace(r"\textbar{}", "")
    )
    assert len(md) == 2 + len(table["rows"]) + 2


def test_headline_without_verdicts_has_one_column():
    table = headline(digest(synthetic_analysis(15, top_k=1, seed=n)) for n in range(3))
    assert table["groups"] == [{"name": "all", "trajectories": 3}]
    assert all(set(r["cells"]) == {"all"} for r in table["rows"])
    assert headline([])["rows"] == []


def test_spread_figures_are_each_trajectorys_value_split_by_correctness():
    digests = digests_of_a_mixed_dataset()
    figures = figures_of(digests)
    assert {"kl_top_5pct", "kl_gini", "surface_share"} <= set(figures)
    for key in ("kl_top_5pct", "kl_gini"):
        traces = {t["name"].split(" ")[0]: t for t in figures[key]["data"]}
        assert set(traces) == {"all", "correct", "incorrect"}  # some lines have no verdict
        assert traces["all"]["name"] == f"all ({len(digests)})"
        wrong = [d[key] for d in digests if d["correct"] is False]
        counts, _ = np.histogram(wrong, bins=20, range=(0, 1))
        assert traces["incorrect"]["y"] == pytest.approx(counts / len(wrong))
        assert traces["incorrect"]["name"] == f"incorrect ({len(wrong)})"
    without = [digest(synthetic_analysis(15, top_k=1, seed=n)) for n in range(3)]
    assert "surface_share" not in figures_of(without)  # no continuations: no empty figure
    assert [t["name"] for t in figures_of(without)["kl_gini"]["data"]] == ["all (3)"]


def test_cell_text_as_the_tables_show_it():
    assert cell([1, 1, 0, 1, 2], "count", 5)["text"] == "1 [1–1]"
    assert cell([4, 5], "count", 3)["text"] == "4.5 [4.25–4.75] (n=2)"
    assert cell([0.25, 0.5], "share", 2)["text"] == "37.5% [31.2–43.8%]"
    assert cell([0.0712, 0.0643, 0.0769], "number", 3)["text"] == "0.0712 [0.0678–0.0741]"
    assert cell([], "share", 4) == {"n": 0, "median": None, "q1": None, "q3": None, "text": "–"}


def test_the_summary_row_carries_the_preflight_headline(tiny, tmp_path):
    from support import tiny_settings
    from vrollout.pipeline.analyzer import Analyzer

    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    a = analyzer.analyze({"prompt": "hi", "response": "hello the world", "privileged": "say hello"})
    row = summary_row(a)
    s = a["summary"]
    assert (row["preflight_ok"], row["noise_floor_reverse_kl_mean"], row["leak_share"]) == (
        s["preflight_ok"], s["noise_floor_reverse_kl_mean"], s["leak_share"]
    )  # fmt: skip
    assert row["noise_floor_reverse_kl_mean"] == a["preflight"]["noise_floor"]["reverse_kl_mean"] is not None
    assert list(next(csv.DictReader(io.StringIO(summaries_csv([row]))))) == list(SUMMARY_COLUMNS)
    older = synthetic_analysis(10, top_k=2, seed=1)  # stored before the preflight: nulls
    assert summary_row(older)["preflight_ok"] is None
