"""math-verify under a wall-clock deadline: the mathematical half of a verdict (`answers.verdict`).

math-verify (sympy underneath) can take minutes on a crafted answer (`9^{9^{9^{9}}}`, `((100)!)!`,
`(x+1)^{2000}` compared with a number) and its own timeout uses SIGALRM, which only a main
thread may set; the server's model worker, jobs and vLLM pools are other threads. So every check
runs in a helper process (`python -m vrollout.verdicts.math_check`, a fresh interpreter: nothing is
forked from a process running torch threads, and unlike multiprocessing's spawn it does not
re-import the caller's __main__ script). A check that misses its deadline has its helper killed
and counts as math-verify not deciding; the next check starts a fresh helper. The main thread
(the CLI) takes the same path, so a line gets the same verdict from the CLI and the server.

Helpers start on first use (an interpreter importing sympy: 1-3 s, outside the deadline), serve
one check at a time each, and end with the process (atexit; a helper also ends when its stdin
closes, and a check has a CPU-time cap in case its parent died).

Two lanes of helpers, so that no client's checks can hold up another's model work: `model` (the
verdicts of analyses: the model worker, a job's lines, the CLI; `POOL_SIZE` at once) and `requests`
(checks a request thread makes, an upload's sibling index above all; `REQUEST_POOL_SIZE` at once).
A request's checks also spend a `Budget`: past it the rest are skipped (math-verify not deciding,
as past a deadline), so one upload's crafted answers cost a few deadlines, not one per line."""

from __future__ import annotations

import atexit
import json
import logging
import math
import re
import resource
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

# Only the end of a text (where the answer is) is parsed: bounded work and bounded messages.
TAIL_CHARS = 2000
SHOWN_CHARS = 200
POOL_SIZE = 2  # helpers of the `model` lane
REQUEST_POOL_SIZE = 2  # helpers of the `requests` lane (two uploads validate at once, web/routes/jobs.py)
CPU_GRACE_S = 10.0  # a helper's CPU cap per check: the deadline + this (see `_cpu_cap`)
START_TIMEOUT_S = 120.0  # a helper's interpreter start and sympy import, on a loaded machine
# The wall-clock limit of one check where no setting is at hand (the default of
# Settings.math_verify_timeout_s, which the analyzer passes with every verdict it asks for).
DEADLINE_S = 3.0
# What one upload's checks may spend (`Budget`): deadlines missed, and seconds of checks in all.
BUDGET_MISSES = 3
BUDGET_SECONDS = 120.0

Lane = Literal["model", "requests"]


@dataclass
class Budget:
    """What the checks of one request (an upload) may spend: `misses` deadlines missed (a crafted
    answer misses every one) and `seconds` of wall clock in all. Once spent, the request's
    remaining checks are skipped and counted (`skipped`); `why` says so for the lines concerned."""

    misses: int = BUDGET_MISSES
    seconds: float = BUDGET_SECONDS
    missed: int = 0
    spent_s: float = 0.0
    skipped: int = 0

    @property
    def spent(self) -> bool:
        return self.missed >= self.misses or self.spent_s >= self.seconds

    def why(self) -> str:
        if self.missed >= self.misses:
            cause = f"{self.missed} checks missed their deadline (VROLLOUT_MATH_VERIFY_TIMEOUT_S)"
        else:
            cause = f"its checks took {self.spent_s:.0f} s, the most one upload may spend"
        return f"math-verify was skipped for the rest of the file: {cause}"


def check(
    text: str,
    reference: str,
    deadline_s: float = DEADLINE_S,
    lane: Lane = "model",
    budget: Budget | None = None,
) -> dict[str, Any] | None:
    """math-verify's reading of `text` against `reference`, within `deadline_s` seconds of wall
    clock: `{"answer", "reference"}` (what it extracted, at most 200 characters, None when
    nothing) and `"equal"` (both parsed and found equal); None when it did not finish in time, no
    helper could run, or `budget` is spent (the check is skipped). `lane`: whose helpers run it
    (the module docstring): `model` for an analysis's verdict, `requests` on a request's thread."""
    if budget is not None and budget.spent:
        budget.skipped += 1
        return None
    request = {"text": text[-TAIL_CHARS:], "reference": reference[-TAIL_CHARS:]}
    started = time.monotonic()
    answer = _POOLS[lane].run({**request, "deadline": deadline_s}, deadline_s)
    if budget is not None:
        budget.spent_s += time.monotonic() - started
        budget.missed += answer is None
    return answer


# --- The helper process's side -------------------------------------------------------------------


# How math-verify found an answer, named from the pattern that matched (its regexes, in the
# order it tries them: "final answer is", \boxed{}, after the word "answer", any LaTeX, then the
# last expression or number in the text).
EXTRACTORS = ("final answer", "boxed", "after 'answer'", "latex", "last expression", "last number")


def _extractor(pattern: str, latex: bool, found: str) -> str:
    """The name of the way math-verify found `found` (EXTRACTORS), from the regex that matched."""
    if "final answer" in pattern.lower():
        return "final answer"
    if "boxed" in pattern:
        return "boxed"
    if "(?i:answer)" in pattern:
        return "after 'answer'"
    if latex:
        return "latex"
    plain = re.fullmatch(r"\s*-?[\d,]*\.?\d+\s*%?\s*", found or "")
    return "last number" if plain else "last expression"


def _parse(text: str, gold: bool = False) -> tuple[list[Any], str | None]:
    """math-verify's parse of `text` and how it found its answer (`_extractor`; None when it
    found nothing). The match is read by wrapping math-verify's own `extract_match` for the
    call: this helper process runs one check at a time."""
    import math_verify.parser as mv
    from math_verify import parse

    if gold and "$" not in text and ("\\" in text or "{" in text):
        text = f"${text}$"  # a bare LaTeX reference (\frac12, \{1,2\}): math-verify wants math mode
    matches: list[tuple[str, bool, str, bool]] = []  # (pattern, latex, string, parsed)
    original = mv.extract_match

    def recording(match: Any, target_type: Any) -> Any:
        parsed, string = original(match, target_type)
        latex = isinstance(target_type, mv.LatexExtractionConfig)
        matches.append((match.re.pattern, latex, string, parsed is not None))
        return parsed, string

    mv.extract_match = recording
    try:
        found = parse(text, parsing_timeout=None)  # the parent's deadline bounds it
    except Exception:  # noqa: BLE001 - an unparsable text is "nothing parsed"
        found = []
    finally:
        mv.extract_match = original
    used = next((m for m in matches if m[3]), matches[0] if matches else None)
    return found, (_extractor(used[0], used[1], used[2]) if found and used else None)


def _shown(parsed: list[Any]) -> str | None:
    """math-verify's result as text: its last element is the string it extracted."""
    return str(parsed[-1])[:SHOWN_CHARS] if parsed else None


def compare(text: str, reference: str) -> dict[str, Any]:
    """The check itself, in this process and without a time limit (the helper runs it)."""
    from math_verify import verify

    (gold, _), (answer, extractor) = _parse(reference, gold=True), _parse(text)
    equal = False
    if gold and answer:
        try:
            equal = bool(verify(gold, answer, timeout_seconds=None))
        except Exception:  # noqa: BLE001 - a comparison that fails is not a match
            equal = False
    return {
        "answer": _shown(answer),
        "reference": _shown(gold),
        "extractor": extractor,
        "both": bool(gold and answer),
        "equal": equal,
    }


def _cpu_cap(seconds: float) -> None:
    """Let this helper use at most `seconds` more CPU time (then the kernel ends it). The parent
    kills it at the deadline; the cap ends a check whose parent died first, which a watcher
    thread could not (sympy's big-integer arithmetic holds the GIL for minutes). CPU time never
    runs ahead of wall time in this one-threaded check, so the cap never ends one in time."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(used.ru_utime + used.ru_stime + seconds)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(
        resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard)
    )


def main() -> None:
    """The helper: one JSON request per stdin line, one JSON answer per stdout line."""
    out = sys.stdout
    sys.stdout = sys.stderr  # a library's print must not land in the answers
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled": the parent's job
    import math_verify  # noqa: F401 - imported before "ready", so no deadline pays for it

    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        _cpu_cap(request["deadline"] + CPU_GRACE_S)
        out.write(json.dumps(compare(request["text"], request["reference"])) + "\n")
        out.flush()


# --- The parent's side ---------------------------------------------------------------------------


class _Helper:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vrollout.verdicts.math_check"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C is for the parent, which ends its helpers
            text=True,
            encoding="utf-8",
        )
        if self._read(START_TIMEOUT_S) != {"ready": True}:
            self.kill()
            raise RuntimeError("the math-verify helper did not start")

    def _read(self, timeout: float) -> Any:
        """The next answer line, or None past `timeout` seconds or when the helper is gone."""
        ready, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0.0))
        line = self.proc.stdout.readline() if ready else ""
        return json.loads(line) if line else None

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()


class _Pool:
    """Helpers started on demand, each serving one check at a time."""

    def __init__(self, size: int) -> None:
        self.slots = threading.BoundedSemaphore(size)
        self.lock = threading.Lock()
        self.idle: list[_Helper] = []
        self.started = 0  # helpers started so far (tests read it: a killed one is replaced)

    def run(self, request: dict[str, Any], deadline: float) -> dict[str, Any] | None:
        with self.slots:
            with self.lock:
                helper = self.idle.pop() if self.idle else None
            try:
                if helper is None:
                    helper = _Helper()
                    with self.lock:
                        self.started += 1
                answer = helper.ask(request, deadline)
            except (OSError, ValueError, RuntimeError) as exc:
                log.warning("math-verify helper failed (%s): the text rule decides", exc)
                answer = None
            if answer is None:  # past the deadline, or the helper died: a fresh one next time
                if helper is not None:
                    helper.kill()
                return None
            with self.lock:
                self.idle.append(helper)
            return answer

    def close(self) -> None:
        with self.lock:
            helpers, self.idle = self.idle, []
        for helper in helpers:
            helper.kill()


_POOL = _Pool(POOL_SIZE)  # the `model` lane
_REQUEST_POOL = _Pool(REQUEST_POOL_SIZE)
_POOLS: dict[str, _Pool] = {"model": _POOL, "requests": _REQUEST_POOL}
for _pool in _POOLS.values():
    atexit.register(_pool.close)

if __name__ == "__main__":
    main()
