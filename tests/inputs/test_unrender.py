"""A rendered prompt back as chat messages (`core.rendered.as_messages`): learned from the
template by probes, accepted only on an exact round trip, on ChatML (the tiny tokenizer's),
a Llama-3-like and a Gemma-like template, and the default model's (SmolLM2, with its default
system prompt)."""

from __future__ import annotations

import pytest
from support.tiny import tiny_tokenizer
from vrollout.inputs.rendered import as_messages, ids_as_messages

# Llama 3's shape: a BOS, header tokens around the role, contents trimmed, <|eot_id|> ends a turn.
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Llama 2's shape: no generation prompt, the system message inside the first [INST], marked by
# <<SYS>>, and the roles must alternate.
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
# Gemma's shape: no system turn (a system message is folded into the first user turn), the
# assistant is "model", and the roles must alternate.
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for m in loop_messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ (first if loop.first else '') + m['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
ONE = [{"role": "user", "content": "What is 2+2?"}]
SYSTEM = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+2?"}]
TURNS = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 17*20?"},
    {"role": "assistant", "content": "340."},
    {"role": "user", "content": "And 17*23?\nShow the steps."},
]
NO_SYSTEM_TURNS = TURNS[1:]


def tokenizer(template: str | None = None):
    tok = tiny_tokenizer()
    if template is not None:
        tok.chat_template = template
    return tok


def render(tok, messages):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("template", [None, LLAMA3, LLAMA2], ids=["chatml", "llama3", "llama2"])
@pytest.mark.parametrize(
    "messages", [ONE, SYSTEM, TURNS, NO_SYSTEM_TURNS], ids=["one", "system", "turns", "no-system"]
)
def test_rendered_prompt_comes_back_as_its_messages(template, messages):
    tok = tokenizer(template)
    text = render(tok, messages)
    assert as_messages(tok, text) == messages
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids_as_messages(tok, ids) == messages


def test_gemma_like_template_folds_the_system_message_back_into_the_user_turn():
    """A template without a system turn writes the system message into the first user turn as
    bare text, which cannot be told from the user's own: one user message holds both (the same
    rendering, so the same text for TRL)."""
    tok = tokenizer(GEMMA)
    assert as_messages(tok, render(tok, NO_SYSTEM_TURNS)) == NO_SYSTEM_TURNS
    text = render(tok, TURNS)
    recovered = as_messages(tok, text)
    assert recovered is not None and render(tok, recovered) == text
    assert recovered[0] == {"role": "user", "content": "Answer briefly.\n\nWhat is 17*20?"}
    assert recovered[1:] == NO_SYSTEM_TURNS[1:]


@pytest.mark.parametrize(
    "template", [None, LLAMA3, LLAMA2, GEMMA], ids=["chatml", "llama3", "llama2", "gemma"]
)
def test_text_that_is_not_a_rendering_is_refused(template):
    tok = tokenizer(template)
    text = render(tok, ONE)
    other = tokenizer(GEMMA if template is None else None)
    refused = [
        "What is 2+2?",  # untemplated text
        text + "2+2 =",  # a prefilled start of the answer after the generation prompt
        text[:-2],  # cut inside the generation prompt
        render(other, ONE),  # another template's rendering
        tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True),
        render(tok, [*ONE, {"role": "assistant", "content": "4"}])[:-1],  # ends on the assistant
    ]
    for bad in refused:
        assert as_messages(tok, bad) is None, bad


def test_ids_that_do_not_tokenize_back_are_refused():
    """Ids whose text renders back, but which the template's text does not tokenize to (not the
    canonical tokenization): TRL would train on other ids, so they are not given as messages."""
    tok = tokenizer()
    help_ = [{"role": "user", "content": "help"}]
    ids = tok(render(tok, help_), add_special_tokens=False)["input_ids"]
    merged = tok.convert_tokens_to_ids("hel")  # the tiny tokenizer merges h+e+l
    at = ids.index(merged)
    odd = ids[:at] + tok.convert_tokens_to_ids(["h", "e", "l"]) + ids[at + 1 :]
    assert tok.decode(odd, skip_special_tokens=False) == render(tok, help_)
    assert ids_as_messages(tok, odd) is None
    assert ids_as_messages(tok, ids) == help_


def test_no_template_and_a_template_that_changes_contents():
    tok = tokenizer()
    tok.chat_template = None
    assert as_messages(tok, "<|im_start|>user\nHi<|im_end|>\n") is None
    upper = tokenizer("{% for m in messages %}{{ m['content'] | upper }}\n{% endfor %}")
    assert as_messages(upper, "HI\n") is None  # the probe's marker changes: not invertible


@pytest.mark.real_model
def test_default_model_template_round_trips(real_analyzer):
    """SmolLM2's template writes a default system prompt when none is given: a prompt rendered
    without a system message comes back without one; one with a system message keeps it."""
    tok = real_analyzer.pair.student.tokenizer
    for messages in (ONE, SYSTEM, TURNS, NO_SYSTEM_TURNS):
        text = render(tok, messages)
        assert as_messages(tok, text) == messages
        assert ids_as_messages(tok, tok(text, add_special_tokens=False)["input_ids"]) == messages
    default = render(tok, ONE)
    assert "You are a helpful AI assistant named SmolLM" in default  # the default system prompt
    assert as_messages(tok, default + "4") is None
