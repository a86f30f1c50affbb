"""Pages and routes of #25/#28 on odd data a user can store: never a 500."""

from __future__ import annotations

import pytest
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
