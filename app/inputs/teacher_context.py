"""Which text the teacher is given, and under which template (docs/formats.md, "Teacher context").

Three kinds, per line (`teacher_context`) or per file (the job's option, the CLI's flag):
`privileged` (the line's `privileged` text: a reference solution, as before), `sibling` (a
successful response to the same prompt from the same file, chosen by `SiblingIndex`), and
`feedback` (the line's `feedback` field: an error message, a grader's comment). Whatever the
kind, the chosen text is spliced into the teacher's prompt by a template exactly as privileged
info is, so the rest of the pipeline (contexts, replay, the analysis) does not change.

The sibling rule (docs/metrics.md, "Sibling teachers"), stated once here: lines share a prompt
when the student's prompt is identical (the same messages, roles and text exactly, or the same
rendered text); a line's response is successful when its own `correct` says so, else when it
matches its `reference_answer` (`verdicts.answers.verdict`, the verdict of the analysis); a line's
sibling is the FIRST successful response in file order, among the other lines with its prompt,
whose text differs from the line's own response. First in file order because it is stable (adding
lines later in the file never changes an earlier choice), deterministic, and needs one pass that
keeps at most two responses per prompt; the text must differ because a line whose duplicate is its
"sibling" would hand the teacher the very response it scores. No torch, no HTTP.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from vrollout.errors import BadTrajectory
from vrollout.inputs.trajectories import Trajectory
from vrollout.rules import check_teacher_template
from vrollout.verdicts.answers import question_of, verdict
from vrollout.verdicts.math_check import DEADLINE_S, Budget

Kind = Literal["privileged", "sibling", "feedback"]
KINDS: tuple[str, ...] = ("privileged", "sibling", "feedback")
SIBLING_TEMPLATE = (
    "{prompt}\n\nA successful attempt at this problem (privileged; the student does not see this):\n"
    "{privileged}"
)
FEEDBACK_TEMPLATE = (
    "{prompt}\n\nFeedback on a previous attempt (privileged; the student does not see this):\n{feedback}"
)
DEFAULT_TEMPLATES = {"sibling": SIBLING_TEMPLATE, "feedback": FEEDBACK_TEMPLATE}
KEPT = 2  # successful responses kept per prompt: enough to skip the line's own


def check_template(template: str, name: str = "teacher_template") -> None:
    """A template given with a line or a job: the rule of the settings' template, as a line's error."""
    try:
        check_teacher_template(template)
    except ValueError as exc:
        raise BadTrajectory(f"{name}: {exc}", field=name) from None


def resolve(traj: Trajectory) -> Trajectory:
    """`traj` with its teacher context applied: `privileged` set to the text the teacher is given,
    `teacher_template` to its template (None: the settings'), `notes` saying what was not used.
    Refuses a kind whose text is missing (no `feedback`, no sibling) with the reason."""
    kind = traj.teacher_context
    if traj.teacher_template is not None:
        check_template(traj.teacher_template)
    if kind == "privileged":
        if traj.feedback:
            traj.notes.append("the feedback field is not used: the teacher context is privileged")
        return traj
    if traj.format == "token_ids":
        raise BadTrajectory(
            f"teacher_context {kind} needs a prompt as text: text cannot be spliced into token ids",
            field="teacher_context",
        )
    if kind == "feedback":
        if not traj.feedback or not traj.feedback.strip():
            raise BadTrajectory(
                "teacher_context feedback needs the line's feedback field (e.g. an error message or a "
                "grader's comment)",
                field="feedback",
            )
        text = traj.feedback
    else:
        if traj.sibling is None:
            raise BadTrajectory(
                "teacher_context sibling: no sibling was chosen (only a file's lines have siblings: "
                "a job, vrollout analyze or analyze_many; or give sibling.response)",
                field="teacher_context",
            )
        text = traj.sibling["response"]
        if traj.feedback:
            traj.notes.append("the feedback field is not used: the teacher context is sibling")
    if traj.privileged:
        traj.notes.append(f"the privileged field is not used: the teacher context is {kind}")
    traj.privileged = text
    traj.teacher_template = traj.teacher_template or DEFAULT_TEMPLATES[kind]
    return traj


def prompt_key(traj: Trajectory) -> str | None:
    """The identity of the student's prompt (None: a prompt given as token ids, never compared)."""
    if traj.messages is None:
        return None
    payload = json.dumps([traj.rendered, traj.messages], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def successful(traj: Trajectory, deadline_s: float = DEADLINE_S, budget: Budget | None = None) -> bool:
    """The line's response is right: its own `correct`, else checked against its reference
    (math-verify within `deadline_s`, on the requests' helpers: an index is built on a request's
    thread; `budget`: what the file's checks may spend, past which the text rule alone decides)."""
    if traj.response_text is None:
        return False  # no response yet (the student will generate one), or one given as ids
    found = verdict(
        traj.response_text, traj.reference_answer, traj.correct, deadline_s, "requests", budget,
        question=question_of(traj.messages),
    )  # fmt: skip
    return bool(found and found["correct"])


@dataclass(frozen=True)
class Sibling:
    line: int
    id: str | None
    response: str

    def as_field(self) -> dict[str, Any]:
        """As a line's `sibling` field (how a job stores the choice)."""
        return {"response": self.response, "line": self.line, "id": self.id}


@dataclass
class SiblingIndex:
    """A file's successful responses, by prompt: one pass over the file (`add` every line), then
    `pick` per line. Memory: two counts and at most two responses per distinct prompt.
    `budget`: what the file's math-verify checks may spend (an upload's); past it a line's
    response is judged by the text rule alone, and `pick` says so where no sibling was found."""

    seen: dict[str, int] = field(default_factory=dict)
    kept: dict[str, list[Sibling]] = field(default_factory=dict)
    verdict_deadline_s: float = DEADLINE_S  # Settings.math_verify_timeout_s
    budget: Budget | None = None
    unchecked: dict[str, int] = field(default_factory=dict)  # prompt -> lines math-verify skipped

    def add(self, number: int, traj: Trajectory) -> None:
        key = prompt_key(traj)
        if key is None:
            return
        self.seen[key] = self.seen.get(key, 0) + 1
        kept = self.kept.setdefault(key, [])
        new = all(s.response != traj.response_text for s in kept)
        if len(kept) < KEPT and new:
            skipped = self.budget.skipped if self.budget is not None else 0
            if successful(traj, self.verdict_deadline_s, self.budget):
                assert traj.response_text is not None
                kept.append(Sibling(number, traj.id, traj.response_text))
            elif self.budget is not None and self.budget.skipped > skipped:
                self.unchecked[key] = self.unchecked.get(key, 0) + 1

    def pick(self, number: int, traj: Trajectory) -> Sibling:
        """The line's sibling (the rule above), or the line's error saying why there is none."""
        key = prompt_key(traj)
        if key is None:
            raise BadTrajectory(
                "teacher_context sibling needs a prompt as text: prompts given as token ids are not compared",
                field="teacher_context",
            )
        for sibling in self.kept.get(key, []):
            if sibling.line != number and sibling.response != traj.response_text:
                return sibling
        others = self.seen.get(key, 1) - 1
        lines = "1 other line of the file has" if others == 1 else f"{others} other lines of the file have"
        where = (
            "no other line of the file has this prompt"
            if others <= 0
            else f"{lines} this prompt, none with a successful response (correct: true, or one that "
            "matches its reference_answer) that differs from this line's own"
        )
        if (unchecked := self.unchecked.get(key, 0)) and self.budget is not None:
            lines = "1 line" if unchecked == 1 else f"{unchecked} lines"
            where += f" ({self.budget.why()}: {lines} with this prompt judged by the text rule alone)"
        raise BadTrajectory(
            f"teacher_context sibling: no successful sibling: {where}", field="teacher_context"
        )


def wants_sibling(line: Any) -> bool:
    """A file line (options filled in) that asks for a sibling and does not carry one."""
    return isinstance(line, dict) and line.get("teacher_context") == "sibling" and line.get("sibling") is None


def teacher_options(teacher_context: str | None, teacher_template: str | None) -> dict[str, str]:
    """A file's teacher context and template (a job's form fields, the CLI's flags, analyze_many's
    keywords), checked: the defaults of its lines (a line's own fields win)."""
    options: dict[str, str] = {}
    if teacher_context is not None:
        if teacher_context not in KINDS:
            raise BadTrajectory(
                f"teacher_context must be privileged, sibling or feedback, got {teacher_context!r}",
                field="teacher_context",
            )
        options["teacher_context"] = teacher_context
    if teacher_template is not None:
        check_template(teacher_template)
        options["teacher_template"] = teacher_template
    return options
