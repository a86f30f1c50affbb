"""Long analyses on one page (#25) and the analysis page's first screen (#28).

Fast: the figure's downsampling keeps every divergence and flagged token. Browser (slow tier):
stored analyses of thousands of synthetic steps, served by the app on a real uvicorn, opened in
headless Chromium: the strip fetches its steps by range while scrolling, its node count stays
bounded, the chips and arrow keys move, the diff marks the divergences, the text has contrast,
context turns are greyed. Screenshots at 1400 and 800 px go to /tmp/shots/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.live import live_app
from support.synthetic import conversation_analysis, synthetic_analysis
from vrollout.report.figures import MAX_POINTS, figure_dict

SHOTS = Path("/tmp/shots")


def test_downsampling_keeps_every_divergence_and_flagged_token():
    a = synthetic_analysis(8000, top_k=2, seed=3)
    a["steps"][4321].update(uncertain=True, agree=True)
    a["steps"][77].update(reverse_kl=50.0)  # the largest reverse KL
    kl = figure_dict(a)["data"][0]
    assert len(kl["x"]) < len(a["steps"])  # downsampled...
    divergences = {s["position"] for s in a["steps"] if not s["agree"]}
    assert divergences <= set(kl["x"]) and {4321, 77, 0, 7999} <= set(kl["x"])  # ...keeping these
    assert len(kl["x"]) <= MAX_POINTS + len(divergences) + 4
    assert kl["x"] == sorted(kl["x"]) and len(kl["text"]) == len(
        kl["x"]
    )  # each point's tokens, for its hover
    # The divergences: every one, a tick from 0 to its KL (one path, not thousands of markers).
    ticks = figure_dict(a)["data"][1]
    assert ticks["x"][:3] == [ticks["x"][0], ticks["x"][0], None] and ticks["mode"] == "lines"
    assert {x for x in ticks["x"] if x is not None} == divergences
    assert [y for y in ticks["y"][1::3]] == [a["steps"][x]["reverse_kl"] for x in ticks["x"][::3]]


def test_context_tokens_are_gaps_in_the_figure_and_outside_the_diff():
    from vrollout.report.analysis_view import diff, page_view

    a = conversation_analysis(300)
    kl = figure_dict(a)["data"][0]
    context = [i for i, s in enumerate(a["steps"]) if not s["scored"]]
    assert all(kl["y"][kl["x"].index(i)] is None for i in context)
    assert "tool token: not scored" in kl["hovertext"][kl["x"].index(context[0])]
    pieces = diff(a["steps"])
    assert not {i for _, _, i in pieces if i is not None} & set(context)
    view = page_view(a, all_steps=False)
    assert [(t["turn"], t["role"], t["scored"]) for t in view["turns"]] == [
        (1, "assistant", True), (2, "tool", False), (3, "assistant", True)]  # fmt: skip
    assert view["segments"][0] == {"segment": "thinking", "start": 0, "stop": 60}


# ----- in a browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tiny, tmp_path_factory):
    """The app on a real uvicorn with stored analyses: 8,000 tokens, 300, and a conversation."""
    long, short, talk = (
        synthetic_analysis(8000, top_k=5, seed=1),
        synthetic_analysis(300, seed=2),
        conversation_analysis(),
    )
    with live_app(tiny, tmp_path_factory.mktemp("long")) as (app, port):
        for a in (long, short, talk):
            app.state.store.save(a)
        yield {"url": f"http://127.0.0.1:{port}", "long": long, "short": short, "talk": talk}


def open_page(browser, url, width=1400, requests=None):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    if requests is not None:
        page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return page


def nodes(page) -> int:
    return page.evaluate("document.getElementsByTagName('*').length")


def test_a_long_page_fetches_steps_by_range_and_stays_small(site, browser):
    a = site["long"]
    requests: list[str] = []
    page = open_page(browser, f"{site['url']}/analyses/{a['id']}", requests=requests)
    first = nodes(page)
    assert page.locator("#strip .col").count() < 2000  # only the blocks near the screen
    ranges = [u for u in requests if "/steps?" in u]
    assert all(f"/api/analyses/{a['id']}/steps?start=" in u for u in ranges)
    # Scroll through the strip (a long one scrolls in its own box): blocks are fetched as they
    # come near, and dropped behind.
    height = page.eval_on_selector("#strip", "e => e.scrollHeight")
    most = first
    for y in range(0, height, 1500):
        page.eval_on_selector("#strip", f"e => e.scrollTo(0, {y})")
        page.wait_for_timeout(60)
        most = max(most, nodes(page))
    page.eval_on_selector("#strip", "e => e.scrollTo(0, e.scrollHeight)")
    page.wait_for_selector("#strip .col[data-i='7999']", timeout=10_000)
    fetched = {u.split("start=")[1] for u in requests if "/steps?" in u}
    assert "7800&stop=8000" in fetched and len(fetched) > 5
    assert most < first + 12_000, (first, most)  # bounded: never the whole strip at once
    assert page.text_content("#strip .col[data-i='7999'] .stu") == a["steps"][7999]["token"]
    # A long page's aligned diff is built when asked, from the tokens: the same marks.
    divergences = [i for i, s in enumerate(a["steps"]) if not s["agree"]]
    assert page.locator("#diff-response mark").count() == 0
    page.click("#show-diff")
    marked = page.eval_on_selector_all("#diff-response mark", "ms => ms.map(m => Number(m.dataset.i))")
    assert marked == divergences
    assert (
        page.locator("#diff-rollout mark").nth(7).text_content() == a["steps"][divergences[7]]["teacher_top1"]
    )
    assert page.text_content("#diff-response") == "".join(s["token"] for s in a["steps"])
    # The figure is downsampled but keeps every divergence.
    kl_points = page.evaluate("document.getElementById('chart').data[0].x.length")
    assert kl_points < 8000
    page.screenshot(path=SHOTS / "long-8k-1400.png")
    assert page.errors == []


def test_chips_jumps_and_arrow_keys_move_through_the_strip(site, browser):
    a = site["long"]
    page = open_page(browser, f"{site['url']}/analyses/{a['id']}")
    top = max(range(len(a["steps"])), key=lambda i: a["steps"][i]["reverse_kl"])
    page.click("#chip-top-kl")
    page.wait_for_function(f"document.body.dataset.selected === '{top}'")
    assert page.evaluate("document.activeElement.dataset.i") == str(top)
    assert page.locator(f"#strip .col[data-i='{top}']").is_visible()
    assert str(top) in page.text_content("#selected")
    # One tab stop: the arrow keys move it (and the selection) token by token.
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"document.body.dataset.selected === '{top + 2}'")
    assert page.locator("#strip .col[tabindex='0']").count() == 1
    assert page.evaluate("document.activeElement.dataset.i") == str(top + 2)
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"document.body.dataset.selected === '{top + 1}'")
    # n: the next divergence; the jump buttons say which one of how many.
    divergences = [i for i, s in enumerate(a["steps"]) if not s["agree"]]
    page.keyboard.press("n")
    following = next(i for i in divergences if i > top + 1)
    page.wait_for_function(f"document.body.dataset.selected === '{following}'")
    page.click("#prev-div")
    page.wait_for_function(
        f"document.body.dataset.selected === '{max(i for i in divergences if i < following)}'"
    )
    assert "divergence" in page.text_content("#jump-status")
    # Search: the first token of the match is selected.
    page.fill("#search", a["steps"][5000]["token"] + a["steps"][5001]["token"])
    page.press("#search", "Enter")
    page.wait_for_function("Number(document.body.dataset.selected) > 0")
    i = int(page.get_attribute("body", "data-selected"))
    joined = a["steps"][i]["token"] + a["steps"][i + 1]["token"]
    assert joined.startswith(a["steps"][5000]["token"])
    # The strip's hover is the chart's hover too.
    page.hover(f"#strip .col[data-i='{following}']")
    page.wait_for_selector(".hoverlayer .hovertext", timeout=5_000)
    assert page.errors == []


def test_the_diff_marks_the_divergences(site, browser):
    a = site["short"]
    page = open_page(browser, f"{site['url']}/analyses/{a['id']}")
    divergences = [i for i, s in enumerate(a["steps"]) if not s["agree"]]
    marked = page.eval_on_selector_all("#diff-response mark", "ms => ms.map(m => Number(m.dataset.i))")
    assert marked == divergences
    student = page.locator("#diff-response mark").all_text_contents()
    teacher = page.locator("#diff-rollout mark").all_text_contents()
    assert student == [a["steps"][i]["token"] for i in divergences]
    assert teacher == [a["steps"][i]["teacher_top1"] for i in divergences]
    assert page.text_content("#diff-response") == "".join(s["token"] for s in a["steps"])
    page.click(f"#diff-response mark[data-i='{divergences[3]}']")
    page.wait_for_function(f"document.body.dataset.selected === '{divergences[3]}'")
    assert page.errors == []


CONTRAST = """(sel) => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  const lin = (v) => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  const lum = ([r, g, b]) => 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  const e = document.querySelector(sel);
  let bg = e, c;
  const clear = (x) => x === "rgba(0, 0, 0, 0)" || x === "transparent";
  while (bg && clear((c = getComputedStyle(bg).backgroundColor))) bg = bg.parentElement;
  const [l1, l2] = [lum(rgb(getComputedStyle(e).color)), lum(rgb(c))].sort((x, y) => y - x);
  return (l1 + 0.05) / (l2 + 0.05);
}"""


def test_the_first_screen_has_the_answer_and_readable_text(site, browser):
    a = site["short"]
    page = open_page(browser, f"{site['url']}/analyses/{a['id']}")
    # Prompt, headline chips, strip: all above the fold at 1400 x 900; Delete is not.
    for sel in ("#prompt", "#headline", "#chips", "#strip .col[data-i='0']"):
        assert page.evaluate(f'document.querySelector("{sel}").getBoundingClientRect().top') < 900, sel
    assert page.evaluate("document.querySelector('#delete').getBoundingClientRect().top") > 900
    agree = next(i for i, s in enumerate(a["steps"]) if s["agree"])
    differs = next(i for i, s in enumerate(a["steps"]) if not s["agree"])
    for sel in (
        f"#strip .col[data-i='{agree}'] .tea",
        f"#strip .col[data-i='{differs}'] .tea",
        ".colour-bar .unit",
    ):
        assert page.evaluate(CONTRAST, sel) >= 4.5, sel
    # The colour bar has units and the fixed scale is remembered for every page.
    assert "nats" in page.text_content("#legend")
    before = page.eval_on_selector(f"#strip .col[data-i='{agree}'] .stu", "e => e.style.backgroundColor")
    page.check("input[name=scale][value=absolute]")
    after = page.eval_on_selector(f"#strip .col[data-i='{agree}'] .stu", "e => e.style.backgroundColor")
    assert before != after and "fixed scale" in page.text_content("#legend")
    again = open_page(browser, f"{site['url']}/analyses/{site['long']['id']}")
    again.goto(f"{site['url']}/analyses/{a['id']}")  # same origin, a new page: the choice stays
    assert page.evaluate("localStorage.getItem('vrollout.klScale')") == "absolute"
    page.screenshot(path=SHOTS / "analysis-1400.png", full_page=True)
    narrow = open_page(browser, f"{site['url']}/analyses/{a['id']}", width=800)
    narrow.screenshot(path=SHOTS / "analysis-800.png", full_page=True)
    # At 800 px the legend sits below the plot, not over it.
    box = "q => (r => [r.top, r.bottom])(document.querySelector('#chart ' + q).getBoundingClientRect())"
    legend, plot = (narrow.evaluate(box, q) for q in (".legend", ".cartesianlayer"))
    assert legend[0] >= plot[1] - 1, (legend, plot)
    assert page.errors == [] and narrow.errors == []


def test_context_turns_are_grey_with_their_role_and_thinking_folds(site, browser):
    a = site["talk"]
    page = open_page(browser, f"{site['url']}/analyses/{a['id']}")
    page.select_option("#turn-select", index=1)  # the tool's turn
    tool = next(i for i, s in enumerate(a["steps"]) if not s["scored"])
    page.wait_for_function(f"document.body.dataset.selected === '{tool}'")
    col = page.locator(f"#strip .col[data-i='{tool}']")
    assert "ctx" in col.get_attribute("class")
    assert col.locator(".stu").evaluate("e => e.style.backgroundColor") == ""  # not coloured
    assert "tool" in page.text_content("#strip .turn-label.ctx")
    assert "not scored" in page.text_content("#selected")
    page.screenshot(path=SHOTS / "conversation-1400.png")
    thinking = page.locator("#strip .col.seg-thinking").first
    assert thinking.is_visible()
    page.check("#fold-thinking")
    assert not thinking.is_visible()
    assert page.errors == []


def test_the_download_opens_offline_with_every_step(site, browser, tmp_path):
    import urllib.request

    a = site["long"]
    with urllib.request.urlopen(f"{site['url']}/analyses/{a['id']}/download") as r:
        html = r.read()
    path = tmp_path / "analysis.html"
    path.write_bytes(html)
    requests: list[str] = []
    page = open_page(browser, path.as_uri(), requests=requests)
    page.click("#chip-top-kl")
    page.wait_for_function("document.body.dataset.selected !== undefined")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    assert not [u for u in requests if u.startswith("http")]
    view = json.loads(page.text_content("#view-data"))
    assert len(view["first"]) == len(a["steps"])
    assert page.errors == []
