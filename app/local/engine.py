"""The replay engine: one teacher-forced pass per model, then metrics chunk by chunk.

Given token ids (contexts and response), computes every per-step field of docs/metrics.md.
Knows nothing about HTTP, storage or text formats; `reference.py` is its naive twin.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from vrollout.local.head import head_tolerance, projection
from vrollout.local.metrics import step_stats
from vrollout.metrics.objectives import ObjectiveSpec
from vrollout.models import LoadedModel, ModelPair
from vrollout.pipeline.replay import Progress, ReplayResult, _no_progress


def final_hidden(model: LoadedModel, input_ids: list[int]) -> Tensor:
    """Final hidden states (L, H) of one teacher-forced pass, without the (L, V) logits."""
    return forced_pass(model, input_ids, keep_cache=False)[0]


def forced_pass(model: LoadedModel, input_ids: list[int], keep_cache: bool) -> tuple[Tensor, Any]:
    """Final hidden states (L, H) of one teacher-forced pass, and its key/value cache if
    `keep_cache` (continuations decode from it instead of running the pass again)."""
    ids = torch.tensor([input_ids], device=model.input_device)  # (1, L)
    out = model.model.get_decoder()(input_ids=ids, use_cache=keep_cache)
    return out.last_hidden_state[0], (out.cache if keep_cache else None)


def head_logits(model: LoadedModel, hidden: Tensor, vocab_size: int) -> Tensor:
    """Logits (C, vocab_size) for a chunk of hidden states, as the model's own head makes them
    but in float32 whatever the model's dtype (`local.head`: no bf16 rounding of the logits)."""
    return finish_logits(model, projection(model, hidden, vocab_size), vocab_size)


def finish_logits(model: LoadedModel, logits: Tensor, vocab_size: int) -> Tensor:
    """The head's projection (C, V_model) made into the model's logits: its logit scale and
    soft-capping, the padding columns beyond the tokenizer dropped."""
    config = model.model.config
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, int | float):
        logits = logits * scale
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits[:, :vocab_size]


@torch.inference_mode()
def check_head(model: LoadedModel, vocab_size: int) -> None:
    """Refuse an architecture whose head `head_logits` does not reproduce (checked at start-up)."""
    ids = [1, 2, 3, 4, 5]
    full = model.model(input_ids=torch.tensor([ids], device=model.input_device)).logits[0, :, :vocab_size]
    ours = head_logits(model, final_hidden(model, ids), vocab_size).to(
        full.device
    )  # split: the head's device
    if not torch.allclose(full.float(), ours.float(), **head_tolerance(model.dtype, full.float())):
        raise RuntimeError(
            f"{model.name}: its output head is not a plain projection of the final hidden "
            "state; the chunked engine does not support this architecture"
        )


def score_hidden(
    pair: ModelPair,
    s_hidden: Tensor,
    t_hidden: Tensor,
    targets: Tensor,
    top_k: int,
    chunk_size: int,
    progress: Progress = _no_progress,
    objectives: ObjectiveSpec | None = None,
) -> ReplayResult:
    """Every metric from the final hidden states (T, H) that predict `targets` (T,), making the
    logits `chunk_size` positions at a time, so no float32 (T, V) tensor ever exists; and the
    vocabulary-wide distillation objectives `objectives` asks for, in the same passes."""
    T = len(targets)
    result = ReplayResult()
    for start in range(0, T, chunk_size):
        stop = min(start + chunk_size, T)
        s_logits = head_logits(pair.student, s_hidden[start:stop], pair.vocab_size)  # (C, V)
        if t_hidden is s_hidden:
            t_logits = s_logits  # the same pass: the same logits (step_stats allows the alias)
        else:
            # A split model's logits come out on its head's device: the teacher's may be another.
            t_logits = head_logits(pair.teacher, t_hidden[start:stop], pair.vocab_size).to(s_logits.device)
        chunk_targets = targets[start:stop].to(s_logits.device)
        result.extend(
            step_stats(s_logits, t_logits, chunk_targets, top_k, overwrite=True, objectives=objectives)
        )
        del s_logits, t_logits
        progress("replay", T + stop, 2 * T)
    return result


@torch.inference_mode()
def replay(
    pair: ModelPair,
    student_context: list[int],
    teacher_context: list[int],
    response: list[int],
    top_k: int = 5,
    chunk_size: int = 128,
    progress: Progress = _no_progress,
    keep_teacher_cache: bool = False,
    keep_student_hidden: bool = False,
    objectives: ObjectiveSpec | None = None,
) -> ReplayResult:
    """Score `response` under both models: one forward pass each over context + response.

    Naive equivalent (`reference.naive_replay`): for every t, run each model on
    context + response[:t] and read the last position. Logits are made from the final hidden
    states `chunk_size` positions at a time, so no float32 (T, V) tensor ever exists.
    `keep_student_hidden`: keep the student's (T, H) in `result.student_hidden` (`replay_teacher`).
    `objectives`: the distillation objectives to compute per step (`result.objectives`).
    """
    T = len(response)
    progress("replay", 0, 2 * T)
    same_pass = pair.shared and student_context == teacher_context  # same weights, same input
    # Position i predicts token i + 1: y_t is predicted at len(context) - 1 + t.
    s_hidden, cache = forced_pass(pair.student, student_context + response, keep_teacher_cache and same_pass)
    s_hidden = s_hidden[len(student_context) - 1 : -1]
    progress("replay", T // 2, 2 * T)
    if same_pass:
        t_hidden = s_hidden
    else:
        t_hidden, cache = forced_pass(pair.teacher, teacher_context + response, keep_teacher_cache)
        t_hidden = t_hidden[len(teacher_context) - 1 : -1]  # (T, H)
    progress("replay", T, 2 * T)
    targets = torch.tensor(response, device=s_hidden.device)  # (T,)
    result = score_hidden(pair, s_hidden, t_hidden, targets, top_k, chunk_size, progress, objectives)
    result.teacher_cache = cache
    if keep_student_hidden:  # a copy: the slice alone, not the whole (L, H) pass behind it
        result.student_hidden = s_hidden.clone()  # (T, H)
    return result


@torch.inference_mode()
def replay_teacher(
    pair: ModelPair,
    student_hidden: Tensor,
    teacher_context: list[int],
    response: list[int],
    top_k: int = 5,
    chunk_size: int = 128,
) -> ReplayResult:
    """`replay` with the student's pass given: its final hidden states (T, H) from an earlier
    replay of the same student context and response (`keep_student_hidden`), so only the teacher
    runs. Equals `replay(pair, student_context, teacher_context, response)` exactly: the
    student's logits are made from the same hidden states, in the same chunks."""
    t_hidden = final_hidden(pair.teacher, teacher_context + response)[len(teacher_context) - 1 : -1]  # (T, H)
    targets = torch.tensor(response, device=student_hidden.device)  # (T,)
    return score_hidden(pair, student_hidden, t_hidden, targets, top_k, chunk_size)


@torch.inference_mode()
def padded_hidden(model: LoadedModel, contexts: list[list[int]], responses: list[list[int]]) -> list[Tensor]:
    """One forward pass over a right-padded batch of context + response sequences; for each,
    the final hidden states (T_b, H) that predict its response. Right padding keeps every real
    token's position and causal view unchanged, so each row equals its own unpadded pass."""
    sequences = [c + r for c, r in zip(contexts, responses, strict=True)]
    L = max(len(s) for s in sequences)
    ids = torch.zeros((len(sequences), L), dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(sequences), L), dtype=torch.long)
    for b, seq in enumerate(sequences):
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
    decoder = model.model.get_decoder()
    hidden = decoder(
        input_ids=ids.to(model.input_device), attention_mask=mask.to(model.input_device), use_cache=False
    ).last_hidden_state  # (B, L, H)
    return [
        hidden[b, len(c) - 1 : len(c) - 1 + len(r)]
        for b, (c, r) in enumerate(zip(contexts, responses, strict=True))
    ]


@torch.inference_mode()
def replay_batch(
    pair: ModelPair,
    items: list[tuple[list[int], list[int], list[int]]],
    top_k: int = 5,
    chunk_size: int = 128,
    keep_student_hidden: bool = False,
    objectives: ObjectiveSpec | None = None,
) -> list[ReplayResult]:
    """`replay` for several (student context, teacher context, response) at once: one padded
    pass per model, metrics over all their positions together. Short sequences gain most.
    `keep_student_hidden`: each result keeps its rows (T_b, H) of the student's pass."""
    s_ctx, t_ctx, responses = (list(x) for x in zip(*items, strict=True))
    s_rows = padded_hidden(pair.student, s_ctx, responses)
    s_hidden = torch.cat(s_rows)  # (ΣT, H)
    if pair.shared and s_ctx == t_ctx:
        t_hidden = s_hidden
    else:
        t_hidden = torch.cat(padded_hidden(pair.teacher, t_ctx, responses))
    targets = torch.tensor([t for r in responses for t in r], device=s_hidden.device)
    result = score_hidden(pair, s_hidden, t_hidden, targets, top_k, chunk_size, objectives=objectives)
    lengths = [len(r) for r in responses]
    results = result.split(lengths)
    if keep_student_hidden:  # views of the concatenation (ΣT, H), not of the padded (B, L, H)
        for piece, rows in zip(results, s_hidden.split(lengths), strict=True):
            piece.student_hidden = rows
    return results


@torch.inference_mode()
def replay_teacher_batch(
    pair: ModelPair,
    student_hiddens: list[Tensor],
    items: list[tuple[list[int], list[int]]],
    top_k: int = 5,
    chunk_size: int = 128,
) -> list[ReplayResult]:
    """`replay_teacher` for several (teacher context, response) at once, each with its student's
    hidden states (T_b, H): one padded pass of the teacher. Equals `replay_batch` over the same
    lines where their student rows came from a padded pass of the same shape (else within
    float32 rounding: matmuls of other shapes)."""
    t_ctx, responses = (list(x) for x in zip(*items, strict=True))
    s_hidden = torch.cat(student_hiddens)  # (ΣT, H)
    t_hidden = torch.cat(padded_hidden(pair.teacher, t_ctx, responses))
    targets = torch.tensor([t for r in responses for t in r], device=s_hidden.device)
    result = score_hidden(pair, s_hidden, t_hidden, targets, top_k, chunk_size)
    return result.split([len(r) for r in responses])


class _StepCounter:
    """A stopping criterion that never stops: it reports generation progress."""

    def __init__(self, prompt_len: int, total: int, progress: Progress) -> None:
        self.prompt_len, self.total, self.progress = prompt_len, total, progress

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: object) -> Tensor:
        self.progress("generate", input_ids.shape[1] - self.prompt_len, self.total)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def generate(
    model: LoadedModel,
    context: list[int],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: Progress = _no_progress,
) -> list[int]:
    """The student's response to `context` (ids), seeded: same seed, same response.

    The end-of-sequence token, when produced, stays in the response: stopping is an action
    the teacher scores like any other.
    """
    from transformers import StoppingCriteriaList

    ids = torch.tensor([context], device=model.input_device)
    tok = model.tokenizer
    eos = model.model.generation_config.eos_token_id or tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if isinstance(eos, int) else 0)
    sampling = temperature > 0
    options: dict[str, object] = {"do_sample": sampling}
    if sampling:
        options.update(temperature=temperature, top_p=top_p, top_k=0)
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            stopping_criteria=StoppingCriteriaList([_StepCounter(len(context), max_new_tokens, progress)]),
            **options,
        )
    return out[0, len(context) :].tolist()
