"""How far to trust a server's numbers: the dtype it computes in and a per-token log-prob error
bound, measured on a probe (a worked math answer) at start-up and on demand.

Two methods (docs/metrics.md, "Noise bounds"):
- `local`: where a local copy of the served model exists (the embedded default has one), the
  probe is scored here too (fp32 weights, float64 log-softmax) and the bound is `SAFETY` times
  the largest difference over every log-prob the server reported (top-K and actual token);
- `repeat`: otherwise, the probe is sent again, alone, longer and cut short, concurrently
  (other batch shapes, other kernels), and the bound is `SAFETY` times the largest spread, but
  never below `REPEAT_FLOOR` of the dtype: repeats cannot see an error that every run makes the
  same way, which is the larger part in bf16.
The dtype is read from the server's own numbers (`served_dtype`). Knows nothing about HTTP
routes or storage; `backend.VLLMBackend` calls `measure`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from vrollout.config import DEFAULT_MODEL, Settings
from vrollout.metrics.noise import (  # noqa: F401 (names this module has always offered)
    FLOOR_MARGIN,
    PROBE_MESSAGES,
    REPEAT_FLOOR,
    SAFETY,
    Noise,
    combine,
    probe_ids,
)
from vrollout.models import load_model
from vrollout.vllm.topk import Position

if TYPE_CHECKING:
    from vrollout.vllm.remote import RemoteModel


class Scorer(Protocol):
    """What measuring needs of the servers (`backend.VLLMBackend` is one): their log-probs of a
    text, k per position."""

    k: int

    def score(
        self, model: RemoteModel, context: list[int], response: list[int], k: int
    ) -> list[Position]: ...


DTYPE_GRIDS = (("bfloat16", torch.bfloat16), ("float16", torch.float16))
GRID_TOLERANCE = 2e-5  # float32 rounding of a log-prob near -20, with room
GRID_POSITIONS = 16  # positions the dtype is read from


def served_dtype(positions: list[Position]) -> str:
    """The format the server's logits were in. A log-prob is logit − logsumexp, so at one
    position every reported log-prob plus one shared constant is a logit: with bf16 (or fp16)
    logits there is a constant that puts them all on that format's grid; fp32 logits fit no
    such coarse grid. Tried with each representable top-1 logit, at `GRID_POSITIONS` positions
    spread over the probe; the majority wins."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    candidates = {}  # every finite value of the format below 1e3: the top logit's candidates
    for name, dtype in DTYPE_GRIDS:
        top = bits.view(dtype).to(torch.float64)
        candidates[name] = top[torch.isfinite(top) & (top.abs() < 1e3)]  # (C,)
    votes: dict[str, int] = {}
    step = max(1, len(positions) // GRID_POSITIONS)
    for position in positions[::step]:
        values = torch.tensor(list(position.logprobs.values()), dtype=torch.float64)
        if len(values) < 4:
            continue
        found = "float32"
        for name, dtype in DTYPE_GRIDS:
            logits = values[None, :] - values.max() + candidates[name][:, None]  # (C, n)
            error = (logits - logits.to(dtype).to(torch.float64)).abs().amax(dim=1)
            if bool((error <= GRID_TOLERANCE).any()):
                found = name
                break
        votes[found] = votes.get(found, 0) + 1
    return max(votes, key=lambda k: votes[k]) if votes else "unknown"


def local_copy(spec: str | None, settings: Settings) -> str | None:
    """`spec` if its weights are on this machine (the embedded default, or a model folder) and
    VROLLOUT_VLLM_NOISE lets them be used; `local` without a copy is refused."""
    here = spec == DEFAULT_MODEL or bool(spec and (Path(spec) / "config.json").exists())
    if settings.vllm_noise == "local" and not here:
        raise ValueError(
            f"VROLLOUT_VLLM_NOISE=local needs the model's weights on this machine, and {spec!r} "
            "is neither the embedded default nor a model folder"
        )
    return spec if here and settings.vllm_noise != "repeat" else None


@torch.inference_mode()
def local_logprobs(spec: str, settings: Settings, ids: list[int]) -> torch.Tensor:
    """(L, V) float64 log-probs of `ids` under the local copy, fp32 weights on the CPU."""
    model = load_model(spec, settings.model_copy(update={"device": "cpu", "dtype": "float32"}))
    logits = model.model(input_ids=torch.tensor([ids])).logits[0]  # (L, V)
    return logits.double().log_softmax(dim=-1)


def measure(backend: Scorer, model: RemoteModel, spec: str | None, settings: Settings) -> Noise:
    """The noise of the servers of `model` on the probe (`spec`: the setting naming its weights)."""
    ids = probe_ids(model.tokenizer)
    first = backend.score(model, ids[:1], ids[1:], backend.k)  # position i predicts ids[i + 1]
    dtype = served_dtype(first)
    spec = local_copy(spec, settings)
    if spec is not None:
        exact = local_logprobs(spec, settings, ids)  # (L, V)
        worst = max(
            abs(value - float(exact[i, token]))
            for i, position in enumerate(first)
            for token, value in position.logprobs.items()
        )
        floor = float(exact[:-1].min()) - FLOOR_MARGIN
        return Noise(dtype, SAFETY * worst, "local", worst, len(first), floor)
    worst = repeat_spread(backend, model, ids, first)
    bound = max(SAFETY * worst, REPEAT_FLOOR.get(dtype, max(REPEAT_FLOOR.values())))
    return Noise(dtype, bound, "repeat", worst, len(first), None)


def repeat_spread(backend: Scorer, model: RemoteModel, ids: list[int], first: list[Position]) -> float:
    """The largest difference from `first` of the same log-probs in other requests of the same
    text: again, with more text after it, cut short, all at once (so batched together)."""
    tail = model.tokenizer("\n\nThat is the answer.", add_special_tokens=False)["input_ids"]
    variants = [ids, ids + tail, ids[: 2 * len(ids) // 3], ids[: len(ids) // 2], ids]
    with ThreadPoolExecutor(len(variants)) as pool:
        answers = list(pool.map(lambda v: backend.score(model, v[:1], v[1:], backend.k), variants))
    worst = 0.0
    for answer in answers:
        for position, reference in zip(answer, first, strict=False):
            for token in position.logprobs.keys() & reference.logprobs.keys():
                worst = max(worst, abs(position.logprobs[token] - reference.logprobs[token]))
    return worst
