"""Contexts: the student's and the teacher's rendered prompts, as exact token ids and text.

Applies each model's chat template and the teacher template (privileged info). Both models
later see the *same* response ids after their context: nothing is re-tokenized across the
boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vrollout.core.errors import BadTrajectory
from vrollout.core.trajectories import Trajectory

if TYPE_CHECKING:  # the core never imports torch
    from vrollout.local.models import LoadedModel, ModelPair


@dataclass
class Contexts:
    student_ids: list[int]
    student_text: str
    teacher_ids: list[int]
    teacher_text: str
    privileged: str | None
    response_ids: list[int] | None  # None: the student must generate
    retokenized: bool  # the response came as text and was tokenized with the student's tokenizer
    notes: list[str]


def teacher_messages(messages: list[dict[str, str]], privileged: str, template: str) -> list[dict[str, str]]:
    """The prompt with the privileged info inserted into the last user message."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise BadTrajectory("privileged info needs a user message in the prompt to attach to")
    out = [dict(m) for m in messages]
    out[last_user]["content"] = template.format(prompt=messages[last_user]["content"], privileged=privileged)
    return out


def render(model: LoadedModel, messages: list[dict[str, str]]) -> tuple[list[int], str, bool]:
    """(ids, text, templated): the messages through the model's chat template, generation prompt
    added. A tokenizer without a chat template gets the contents joined by blank lines."""
    tok = model.tokenizer
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        templated = True
    else:
        text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        templated = False
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return list(ids), text, templated


def _decode(model: LoadedModel, ids: list[int]) -> str:
    return model.tokenizer.decode(ids, skip_special_tokens=False)


def build_contexts(traj: Trajectory, pair: ModelPair) -> Contexts:
    """Both contexts and the response ids for one trajectory (no model forward pass)."""
    notes: list[str] = []
    privileged = traj.privileged or None
    if traj.format == "token_ids":
        assert traj.prompt_ids is not None
        s_ids = traj.prompt_ids
        t_ids = traj.teacher_prompt_ids or traj.prompt_ids
        s_text, t_text = _decode(pair.student, s_ids), _decode(pair.teacher, t_ids)
    else:
        assert traj.messages is not None
        s_ids, s_text, templated = render(pair.student, traj.messages)
        t_msgs = (
            teacher_messages(traj.messages, privileged, pair.teacher_template)
            if privileged
            else traj.messages
        )
        t_ids, t_text, _ = render(pair.teacher, t_msgs)
        if not templated:
            notes.append("the student's tokenizer has no chat template: contents joined as text")
    retokenized = False
    response_ids = traj.response_ids
    if response_ids is None and traj.response_text is not None:
        response_ids = list(pair.student.tokenizer(traj.response_text, add_special_tokens=False)["input_ids"])
        retokenized = True
        notes.append("the response was given as text and tokenized with the student's tokenizer")
    if response_ids is not None and not response_ids:
        raise BadTrajectory("the response is empty: there is nothing to replay")
    return Contexts(s_ids, s_text, t_ids, t_text, privileged, response_ids, retokenized, notes)


def check_ids(name: str, ids: list[int], vocab_size: int) -> None:
    """Token ids must index the shared vocabulary."""
    for i, token in enumerate(ids):
        if not 0 <= token < vocab_size:
            raise BadTrajectory(
                f"{name}[{i}] = {token} is outside the vocabulary (0..{vocab_size - 1})",
                field=name,
                index=i,
            )
