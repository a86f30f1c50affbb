"""A teacher template's fields are exactly the documented placeholders: no conversion, no format
spec, no attribute or index. A spec such as `{prompt:>400000000}` once made str.format pad the
prompt to 400 MB before any size check, and `{prompt:d}` raised a 500; now both are refused by
the one parser that also fills the template, wherever a template comes from (issue #24, item 3)."""

from __future__ import annotations

import json

import pytest
from support import assert_error, upload
from vrollout.rules import (
    check_prompt_format,
    check_teacher_template,
    fill_prompt_format,
    fill_teacher_template,
)

Q = "What is 6*7?"
LINE = {"id": "p", "prompt": Q, "response": "41", "privileged": "42"}
BAD = [
    ("{prompt:>400000000}{privileged}", "{prompt:>400000000}"),
    ("{prompt:d}{privileged}", "{prompt:d}"),
    ("{prompt!r}{privileged}", "{prompt!r}"),
    ("{prompt}{privileged!s:^9}", "{privileged!s:^9}"),
    ("{prompt.upper}{privileged}", "{prompt.upper}"),
    ("{prompt[0]}{privileged}", "{prompt[0]}"),
    ("{prompt}{privileged}{}", "{}"),
    ("{prompt}{0}{privileged}", "{0}"),
]


@pytest.mark.parametrize(("template", "shown"), BAD)
def test_a_field_with_a_spec_conversion_attribute_or_index_is_refused(template, shown):
    with pytest.raises(ValueError, match="teacher template has") as info:
        check_teacher_template(template)
    assert shown in str(info.value)
    with pytest.raises(ValueError, match="teacher template has"):
        fill_teacher_template(template, "p" * 10, "x")  # the fill refuses what the check refuses


def test_plain_fields_are_filled_as_given_without_format_machinery():
    template = "{{literal}} {prompt} | {privileged} | {feedback}"
    # Braces and format-looking text in the values are not read again.
    filled = fill_teacher_template(template, "{privileged:>9}", "{0}")
    assert filled == "{literal} {privileged:>9} | {0} | {0}"
    assert filled == template.format(prompt="{privileged:>9}", privileged="{0}", feedback="{0}")
    assert fill_prompt_format("<s>{prompt}</s>", "{x}") == "<s>{x}</s>"
    with pytest.raises(ValueError, match=r"prompt format has \{prompt:5\}"):
        check_prompt_format("{prompt:5}")


def test_the_api_refuses_a_spec_with_a_422_naming_the_template(tiny_client):
    for template, shown in BAD[:2]:
        r = tiny_client.post("/api/analyze", json={**LINE, "teacher_template": template})
        assert_error(r, 422, "teacher_template", shown)


def test_a_job_refuses_a_spec_in_the_form_field_a_line_and_a_mapped_column(tiny_client):
    spec = "{prompt:>400000000}{privileged}"
    form = upload(tiny_client, json.dumps(LINE), teacher_template=spec)
    assert_error(form, 422, "teacher_template", "{prompt:>400000000}")
    lines = [LINE, {**LINE, "id": "q", "teacher_template": "{prompt:d}{privileged}"}]
    r = upload(tiny_client, "\n".join(json.dumps(x) for x in lines))
    assert r.status_code == 201, r.text
    [rejected] = r.json()["rejected"]
    assert (
        rejected["line"] == 2
        and "teacher_template" in rejected["error"]
        and "{prompt:d}" in rejected["error"]
    )
    theirs = {"q": Q, "a": "41", "hint": "42", "tpl": "{prompt!r}{privileged}"}
    mapped = upload(
        tiny_client, json.dumps(theirs), map="prompt=q,response=a,privileged=hint,teacher_template=tpl"
    )
    assert_error(mapped, 422, "teacher_template", "{prompt!r}")  # the file's only line
