"""Pages and routes of #25/#28 on odd data a user can store: never a 500."""

from __future__ import annotations

import json
import re

import pytest
from support import GOOD, assert_error, upload, wait_done
from support.synthetic import synthetic_analysis

# `meta` is the caller's own object (any JSON): steps and a label in it that are not a
# localization line's (metrics.localization.localization_line checks those) are not steps to draw.
NOT_STEPS = [
    {"steps": [], "label": 0},
    {"steps": ["a", "b"], "label": 5},
    {"steps": [1, 2], "label": 0},
    {"steps": ["a", None], "label": 1},
]


@pytest.mark.parametrize("meta", NOT_STEPS)
def test_an_analysis_whose_meta_has_odd_steps_opens_without_them(tiny_client, meta):
    analysis = synthetic_analysis(12, top_k=3)
    analysis["trajectory"]["meta"] = meta
    tiny_client.app.state.store.save(analysis)
    page = tiny_client.get(f"/analyses/{analysis['id']}")
    assert page.status_code == 200
    assert 'id="steps-overlay"' not in page.text
    assert tiny_client.get(f"/analyses/{analysis['id']}/download").status_code == 200


@pytest.mark.parametrize("meta", NOT_STEPS[:1] + NOT_STEPS[2:])
def test_a_job_whose_meta_has_steps_that_are_not_texts_has_no_localization(tiny_client, meta):
    """A plain line's `meta` may hold anything: steps that are not texts are no localization line,
    and a job of none is the clear 422 a job without steps gets (it was a 500)."""
    created = upload(tiny_client, json.dumps({**GOOD, "meta": meta}) + "\n").json()
    job = created["job"]["id"]
    assert wait_done(tiny_client, job)["state"] == "done"
    assert_error(tiny_client.get(f"/api/jobs/{job}/localization"), 422, "no analysed line carries steps")
    assert tiny_client.get(f"/jobs/{job}/localization", headers={"accept": "text/html"}).status_code == 422
    assert tiny_client.get(f"/jobs/{job}").status_code == 200


def test_a_prompts_tool_calls_are_shown_escaped_and_no_content_is_not_none(tiny_client):
    """An agent's history given as the prompt: an assistant message of tool calls only (content
    null) shows the calls, as name(arguments), escaped; never the word None."""
    analysis = synthetic_analysis(12, top_k=3)
    call = {"id": "c1", "type": "function", "function": {"name": "get<b>", "arguments": {"city": "<i>Paris"}}}
    analysis["trajectory"]["prompt"] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call, {"function": "odd"}]},
        {"role": "assistant", "tool_calls": [call]},  # no content at all
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    tiny_client.app.state.store.save(analysis)
    page = tiny_client.get(f"/analyses/{analysis['id']}")
    assert page.status_code == 200
    prompt = page.text.split('id="prompt"')[1].split("</section>")[0]
    assert "None" not in prompt and "<b>" not in prompt and "<i>" not in prompt
    assert 'class="tool-call">get&lt;b&gt;({' in prompt and "Paris" in prompt


def test_a_step_labelled_lines_page_loads_its_overlay_script_after_common_js(tiny_client):
    """steps_overlay.js takes its helpers from common.js (VR): loaded before it, it stopped at
    its first line and the steps were never drawn on the strip."""
    analysis = synthetic_analysis(12, top_k=3)
    analysis["trajectory"]["meta"] = {"steps": ["first step", "second step"], "label": 1}
    tiny_client.app.state.store.save(analysis)
    html = tiny_client.get(f"/analyses/{analysis['id']}").text
    scripts = re.findall(r'<script src="/static/([^"]+)"', html)
    assert 'id="steps-overlay"' in html and "steps_overlay.js" in scripts
    assert scripts.index("common.js") < scripts.index("steps_overlay.js")
