"""How far reduced-precision numbers may be trusted: the `noise` object of an analysis and of
`/api/models` (docs/metrics.md, "Noise bounds"), the probe it is measured on and the constants
of the measure. Pure Python: the vLLM backend (`vllm/noise.py`) and the local engine
(`local/precision.py`) measure it each their own way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SAFETY = 2.0  # bound = SAFETY × the largest difference seen on the probe
FLOOR_MARGIN = 10.0  # nats below the smallest log-prob seen on the probe: the tail's floor
# The smallest bound `repeat` gives: SAFETY × the largest difference from the local engine seen
# on the default model's probe (bf16 0.54 nats, fp32 1e-4; fp16, with 3 more mantissa bits than
# bf16, an eighth of bf16's, with room). A repeated request repeats its error (vLLM-CPU gave the
# same numbers to the bit), so spreads alone would call bf16 exact. docs/metrics.md.
REPEAT_FLOOR = {"float32": 2e-4, "float16": 0.15, "bfloat16": 1.1}
PROBE_MESSAGES = [
    {
        "role": "user",
        "content": "A train leaves at 9:40 and travels 174 km at 58 km/h. It then waits 25 minutes "
        "and travels another 96 km at 64 km/h. When does it arrive?",
    },
    {
        "role": "assistant",
        "content": "Let's work it out step by step.\n\n"
        "1. First leg: time = distance / speed = 174 / 58 = 3 hours.\n"
        "2. The wait adds 25 minutes.\n"
        "3. Second leg: time = 96 / 64 = 1.5 hours, which is 1 hour and 30 minutes.\n"
        "4. Total time: 3 h + 25 min + 1 h 30 min = 4 hours and 55 minutes.\n\n"
        "Starting at 9:40, adding 4 hours gives 13:40, and adding 55 more minutes gives 14:35.\n\n"
        "Check: 58 × 3 = 174 and 64 × 1.5 = 96, so both legs are right, and "
        "9:40 + 4:55 = 14:35.\n\n"
        "The train arrives at **14:35** (2:35 pm).",
    },
]


@dataclass
class Noise:
    """The `noise` object of an analysis and of `/api/models` (docs/metrics.md, "Noise bounds")."""

    dtype: str
    logprob_bound: float  # nats: every reported log-prob is taken to be within this of the exact one
    method: str  # "local" | "repeat"
    measured: float  # the largest difference seen on the probe (bound = SAFETY × this, or the floor)
    probe_tokens: int
    logprob_floor: float | None  # smallest log-prob a token is taken to have (KL intervals' hi)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_ids(tokenizer: Any) -> list[int]:
    """The probe as the model sees it: the chat template's text, then its ids (as `contexts`)."""
    text = tokenizer.apply_chat_template(PROBE_MESSAGES, tokenize=False, add_generation_prompt=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def combine(noises: list[Noise]) -> Noise:
    """One `noise` for the student's and the teacher's servers: the larger bound, the lower floor."""
    if len(noises) == 1:
        return noises[0]
    floors = [n.logprob_floor for n in noises]
    return Noise(
        dtype="/".join(dict.fromkeys(n.dtype for n in noises)),
        logprob_bound=max(n.logprob_bound for n in noises),
        method="/".join(dict.fromkeys(n.method for n in noises)),
        measured=max(n.measured for n in noises),
        probe_tokens=min(n.probe_tokens for n in noises),
        logprob_floor=None if None in floors else min(f for f in floors if f is not None),
    )
