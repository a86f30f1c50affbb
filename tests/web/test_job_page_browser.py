"""The job page, /jobs and /analyses in Chromium (#28): the first-divergence histogram shows both
groups side by side, training steps are categories, the trajectories table scrolls inside its
card at 800 px and sorts by keyboard (aria-sort), groups by step and draws a mini KL strip per
row; /jobs names each job's mode; /analyses carries the job table's columns and sorts too. No
script errors anywhere."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from support import GOOD
from support.live import live_app

pytestmark = pytest.mark.browser

# Right and wrong answers at three training steps (10 after 2: a number, not text order).
LINES = [
    {**GOOD, "id": f"t{n}", "response": text, "correct": n % 2 == 0, "step": step}
    for n, (text, step) in enumerate(
        [("hello the world", 1), ("the world is here", 2), ("no", 10), ("hello there", 1),
         ("world world", 2), ("a longer answer that goes on for a while", 10), ("yes", 1), ("maybe so", 2)]
    )
]  # fmt: skip


def watch(page) -> list[str]:
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    return problems


def no_page_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def overlapping_bars(page, figure: str) -> int:
    """Bars of the first trace that overlap a bar of the second horizontally (0: side by side)."""
    return page.evaluate(
        """(id) => {
            const boxes = (g) => [...g.querySelectorAll("path")].map((p) => p.getBoundingClientRect());
            const traces = [...document.querySelectorAll(`#${id} g.trace.bars`)]
              .map((g) => boxes(g).filter((r) => r.height > 0));
            if (traces.length !== 2 || !traces[0].length || !traces[1].length) return -1;
            let overlaps = 0;
            for (const a of traces[0])
              for (const b of traces[1]) if (a.left < b.right - 0.5 && b.left < a.right - 0.5) overlaps++;
            return overlaps;
        }""",
        figure,
    )


def test_job_page_figures_and_table(browser, tiny, tmp_path):
    with live_app(tiny, tmp_path) as (_, port):
        base = f"http://127.0.0.1:{port}"
        lines = "\n".join(json.dumps(x) for x in LINES).encode()
        form = {"privileged": "the answer: world"}  # a teacher that differs: divergences
        job = httpx.post(f"{base}/api/jobs", files={"file": ("lines.jsonl", lines)}, data=form).json()["job"][
            "id"
        ]
        deadline = time.time() + 300
        while httpx.get(f"{base}/api/jobs/{job}").json()["state"] != "done":
            assert time.time() < deadline
            time.sleep(0.2)
        rows = httpx.get(f"{base}/api/jobs/{job}/table").json()
        context = browser.new_context(viewport={"width": 800, "height": 900})
        page = context.new_page()
        problems = watch(page)
        page.goto(f"{base}/jobs/{job}")
        page.wait_for_selector(f"body[data-loaded='{len(LINES)}']", timeout=60_000)

        # The first screen: the answer, then the models and settings.
        assert page.text_content("#answer").startswith(f"Across {len(LINES)} trajectories")
        assert "Student" in page.text_content("#job-models")
        assert page.locator("#job-settings dt").all_text_contents()[:3] == [
            "mode",
            "top_k",
            "continuation_tokens",
        ]

        # Histogram: both groups drawn, side by side; integer count axis.
        page.wait_for_selector("#fig-first_divergence .main-svg", timeout=60_000)
        assert overlapping_bars(page, "fig-first_divergence") == 0
        ticks = page.locator("#fig-first_divergence .ytick text").all_text_contents()
        assert ticks and all(t.isdigit() for t in ticks)

        # Drift: the steps are categories, in number order; the charts sit in the drift card.
        page.wait_for_selector("#drift #fig-drift_length .main-svg", timeout=60_000)
        assert (
            page.evaluate("document.getElementById('fig-drift_length')._fullLayout.xaxis.type") == "category"
        )
        assert page.locator("#fig-drift_length .xtick text").all_text_contents() == ["1", "2", "10"]

        # The table scrolls inside its card, the page itself does not at 800 px.
        assert page.evaluate(
            "(() => { const s = document.querySelector('#trajectories-card .table-scroll');"
            " return s.scrollWidth > s.clientWidth; })()"
        )
        card = page.locator("#trajectories-card").bounding_box()
        assert card["x"] + card["width"] <= 800 and no_page_overflow(page)

        # Keyboard sorting: Tab to a heading's button, Enter sorts, Space reverses.
        button = page.locator("#trajectories th[data-key=reverse_kl_total] button")
        button.focus()
        page.keyboard.press("Enter")
        th = page.locator("#trajectories th[data-key=reverse_kl_total]")
        assert th.get_attribute("aria-sort") == "ascending"
        assert page.locator("#trajectories th[data-key=line]").get_attribute("aria-sort") is None
        shown = [float(x) for x in page.locator("#trajectories tbody tr td:nth-child(7)").all_text_contents()]
        assert shown == sorted(shown)
        page.keyboard.press("Space")
        assert th.get_attribute("aria-sort") == "descending"
        shown = [float(x) for x in page.locator("#trajectories tbody tr td:nth-child(7)").all_text_contents()]
        assert shown == sorted(shown, reverse=True)

        # The new columns, from the table rows; a mini strip of ten tenths per row.
        per_100 = page.locator("#trajectories tbody tr td:nth-child(13)").all_text_contents()
        assert sorted(per_100) == sorted(f"{r['divergences_per_100_tokens']:.1f}" for r in rows)
        assert page.locator("#trajectories tbody svg.kl-strip").count() == len(LINES)
        assert page.locator("#trajectories tbody svg.kl-strip").first.locator("rect").count() == 10

        # Grouped by training step: one heading row per step, in number order.
        page.check("#group-step")
        groups = page.locator("#trajectories tbody tr.group").all_text_contents()
        assert [g.split(" · ")[0] for g in groups] == ["step 1", "step 2", "step 10"]
        assert groups[0].split(" · ")[1] == "3 trajectories"

        # /jobs: the mode column.
        page.goto(f"{base}/jobs")
        assert page.locator("#jobs td[data-key=mode]").all_text_contents() == ["analyze"]
        assert "Mode" in page.locator("#jobs thead").text_content()

        # /analyses: the job table's columns, each row linked to its job, sortable by keyboard.
        page.goto(f"{base}/analyses")
        head = page.locator("#analyses thead").text_content()
        for column in ("Response", "Verdict", "Job", "Step", "Div. / 100 tokens", "Top 5% share"):
            assert column in head
        assert page.locator("#analyses td[data-key=job] a").count() == len(LINES)
        assert page.locator("#analyses svg.kl-strip").count() == len(LINES)
        page.locator("#analyses th[data-key=tokens] button").focus()
        page.keyboard.press("Enter")
        assert page.locator("#analyses th[data-key=tokens]").get_attribute("aria-sort") == "ascending"
        tokens = [int(t) for t in page.locator("#analyses td[data-key=tokens]").all_text_contents()]
        assert tokens == sorted(tokens)
        assert no_page_overflow(page)
        context.close()
        assert problems == []


def test_a_running_jobs_page_is_never_blank(browser, tiny, tmp_path):
    """Before its lines are done every card says what is known: the progress, the pending
    answer, a row saying how many lines are done; then the rows arrive without a reload."""
    with live_app(tiny, tmp_path) as (_, port):
        base = f"http://127.0.0.1:{port}"
        lines = "\n".join(json.dumps({**GOOD, "id": f"l{n}"}) for n in range(40)).encode()
        job = httpx.post(f"{base}/api/jobs", files={"file": ("lines.jsonl", lines)}).json()["job"]["id"]
        page = browser.new_page()
        problems = watch(page)
        page.goto(f"{base}/jobs/{job}")
        assert page.text_content("#answer").strip()
        assert page.locator("#trajectories tbody tr").count() >= 1  # a pending row, or the rows
        assert page.locator("#job-settings dt").count() >= 5
        page.wait_for_selector("body[data-loaded='40']", timeout=120_000)  # refreshed as lines land
        assert page.locator("#trajectories tbody tr.pending").count() == 0
        assert page.is_hidden("#headline-pending")
        page.close()
        assert problems == []
