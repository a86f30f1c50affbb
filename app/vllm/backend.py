"""The vLLM backend: scoring and generation through vLLM's OpenAI-compatible server.

Scoring sends `context + response` ids as the prompt of `/v1/completions` with `max_tokens: 1`
and `prompt_logprobs: K`; `topk.py` turns the answer into the engine's per-step arrays.
Generation (the student's response, teacher continuations, recovery, the pedagogical rollout)
goes to the same servers, greedy where the local engine is greedy. Tokenization stays local
(the model's own tokenizer, from a folder), checked against every server at start-up
(`remote.py`).
`VLLMBackend` is a `pipeline.backend.Backend`; the rules it shares with the local engine are
`rules`'. Knows nothing about HTTP routes or storage; `client.py` does the transport.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from vrollout.config import Settings
from vrollout.errors import BadTrajectory
from vrollout.metrics.intervals import noise_fields
from vrollout.models import ModelPair, with_rendering
from vrollout.pipeline.backend import BatchItem
from vrollout.pipeline.branches import from_divergences
from vrollout.pipeline.pedagogical import rollout_steps, summarize_rollout
from vrollout.pipeline.replay import Progress, ReplayResult, _no_progress
from vrollout.rules import Policy, check_teacher_template, cut_at_eos, pedagogical_step
from vrollout.vllm.client import ReplicaPool
from vrollout.vllm.noise import Noise, combine, measure
from vrollout.vllm.remote import RemoteModel, check_server, eos_ids, load_tokenizer
from vrollout.vllm.topk import (
    ESTIMATED_FIELDS,
    BadServerAnswer,
    Position,
    parse_positions,
    replay_from_positions,
)


def load_remote_pair(settings: Settings) -> tuple[ModelPair, VLLMBackend]:
    """The student and teacher as served by vLLM, checked to share the local vocabulary."""
    if not settings.teacher_urls:
        raise ValueError("the vllm backend needs at least one teacher URL (--teacher-url)")
    check_teacher_template(settings.teacher_template)

    def pool_of(role: str, urls: list[str]) -> ReplicaPool:
        return ReplicaPool(
            role, urls, settings.vllm_concurrency, settings.vllm_retries, settings.vllm_backoff_s,
            settings.vllm_timeout_s,
        )  # fmt: skip

    teacher_pool = pool_of("teacher", settings.teacher_urls)
    if settings.tokenizer == "server":  # the teacher server's /tokenize and /detokenize
        from vrollout.vllm.tokenizer import ServerTokenizer

        tokenizer: Any = ServerTokenizer(teacher_pool, teacher_pool.get("/v1/models")["data"][0]["id"])
        eos = tokenizer.eos_ids  # learned from completions that stop
    else:
        tokenizer, path = load_tokenizer(settings)
        eos = eos_ids(tokenizer, path)

    def remote(role: str, urls: list[str]) -> RemoteModel:
        pool = teacher_pool if role == "teacher" else pool_of(role, urls)
        served = check_server(pool, tokenizer)
        name = Path(served).name if served.startswith("/") else served  # a folder: its name
        return RemoteModel(name, " ".join(urls), None, tokenizer, pool, served, eos)

    teacher = remote("teacher", settings.teacher_urls)
    shared = not settings.student_urls or settings.student_urls == settings.teacher_urls
    student = teacher if shared else remote("student", settings.student_urls)
    pair = ModelPair(student, teacher, shared, len(tokenizer), settings.teacher_template)
    pair = with_rendering(pair, settings)
    backend = VLLMBackend(pair, settings.vllm_logprobs, settings.vllm_concurrency, settings)
    for model in {id(student): student, id(teacher): teacher}.values():
        try:  # K log-probs must be allowed by the server's --max-logprobs
            backend.score(model, [tokenizer.eos_token_id or 0], [tokenizer.eos_token_id or 0], backend.k)
        except BadTrajectory as exc:
            backend.close()
            raise ValueError(
                f"{exc.message}: start the server with --max-logprobs {backend.k} or more, or lower "
                "VROLLOUT_VLLM_LOGPROBS"
            ) from None
    try:
        backend.measure_noise()
    except BaseException:
        backend.close()
        raise
    return pair, backend


class VLLMBackend:
    """`pipeline.backend.Backend` for a remote `ModelPair`. Thread-safe; requests that do not
    depend on each other (student and teacher scoring, one continuation per prefix) are sent
    concurrently, bounded by each pool's per-replica limit."""

    name = "vllm"
    padded_batches = False  # a server batches concurrent requests by itself
    remote = True

    def __init__(self, pair: ModelPair, k: int, concurrency: int, settings: Settings | None = None) -> None:
        self.pair, self.k, self.concurrency = pair, k, concurrency
        self.settings = settings or Settings(backend="vllm")
        self.noise: Noise | None = None  # `measure_noise`, at start-up and on demand
        pools = {id(m.pool): m.pool for m in (pair.student, pair.teacher)}  # type: ignore[attr-defined]
        self.pools: list[ReplicaPool] = list(pools.values())
        fan_out = concurrency * sum(len(p.replicas) for p in self.pools) + 2
        self._fan_out = ThreadPoolExecutor(max_workers=fan_out, thread_name_prefix="vrollout-vllm")

    @classmethod
    def from_settings(cls, settings: Settings) -> VLLMBackend:
        """The configured servers, checked (`load_remote_pair`)."""
        return load_remote_pair(settings)[1]

    @property
    def lines_in_flight(self) -> int:
        """Enough lines to fill every replica of the largest pool."""
        return self.concurrency * max(len(p.replicas) for p in self.pools)

    def check_top_k(self, top_k: int) -> None:
        if top_k > self.k:
            message = f"top_k must be at most {self.k} here (VROLLOUT_VLLM_LOGPROBS)"
            raise BadTrajectory(message, field="top_k")

    def close(self) -> None:
        self._fan_out.shutdown(wait=False, cancel_futures=True)
        for pool in self.pools:
            pool.close()

    def measure_noise(self) -> Noise:
        """The servers' dtype and log-prob error bound, measured now on the probe (`noise.py`);
        every later analysis carries it."""
        pair, settings = self.pair, self.settings
        noises = [measure(self, pair.teacher, settings.teacher or settings.student, settings)]  # type: ignore[arg-type]
        if not pair.shared:
            noises.append(measure(self, pair.student, settings.student, settings))  # type: ignore[arg-type]
        self.noise = combine(noises)
        pair.teacher.served_dtype = noises[0].dtype  # type: ignore[attr-defined]
        pair.student.served_dtype = noises[-1].dtype  # type: ignore[attr-defined]
        return self.noise

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "top_k_logprobs": self.k,
            "dtype": self.noise.dtype if self.noise else None,
            "noise": self.noise.as_dict() if self.noise else None,
            "replicas": [r for pool in self.pools for r in pool.describe()],
        }

    def status(self, since: float) -> dict[str, Any]:
        """The replicas, and their failures (each retried elsewhere unless it was the last
        attempt) since `since`."""
        events = [e for pool in self.pools for e in list(pool.events) if e.at >= since]
        return {
            "replicas": self.describe()["replicas"],
            "replica_errors": [e.as_dict() for e in sorted(events, key=lambda e: e.at)],
        }

    # Requests.
    def complete(self, model: RemoteModel, prompt: list[int], **params: Any) -> dict[str, Any]:
        """One `/v1/completions` call with token ids as the prompt; its single choice."""
        assert model.pool is not None
        body = {"model": model.served_name, "prompt": prompt, "return_token_ids": True, **params}
        answer = model.pool.post("/v1/completions", body)
        try:
            choice = answer["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise BadServerAnswer(f"the {model.pool.role} server answered without choices") from None
        ids = choice.get("token_ids")
        stopped = choice.get("finish_reason") == "stop" and choice.get("stop_reason") is None
        if stopped and ids and hasattr(model.tokenizer, "learn_eos"):
            model.tokenizer.learn_eos(ids[-1])  # stopped on an end-of-sequence token
        return choice

    def score(self, model: RemoteModel, context: list[int], response: list[int], k: int) -> list[Position]:
        """The server's top-k and actual-token log-probs at every response position."""
        prompt = context + response
        choice = self.complete(model, prompt, max_tokens=1, temperature=0.0, prompt_logprobs=k)
        return parse_positions(choice.get("prompt_logprobs"), prompt, len(context), k)

    def next_token(
        self, model: RemoteModel, prompt: list[int], temperature: float, top_p: float, seed: int
    ) -> tuple[int, float]:
        """One token from the server's sampler and its (raw) log-prob."""
        params: dict[str, Any] = {"max_tokens": 1, "temperature": temperature, "logprobs": 1}
        if temperature > 0:
            params.update(top_p=top_p, seed=seed)
        choice = self.complete(model, prompt, **params)
        ids = choice.get("token_ids") or []
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
        if len(ids) != 1 or len(logprobs) != 1:
            raise BadServerAnswer("a one-token completion did not come back with one token")
        return ids[0], float(logprobs[0])

    def last_position(self, model: RemoteModel, prompt: list[int]) -> Position:
        """What the server knows about the last token of `prompt`: its log-prob and rank,
        and the top-1 at that position."""
        choice = self.complete(model, prompt, max_tokens=1, temperature=0.0, prompt_logprobs=1)
        return parse_positions(choice.get("prompt_logprobs"), prompt, len(prompt) - 1, 1)[0]

    # The Backend protocol.
    def replay(
        self,
        student_context: list[int],
        teacher_context: list[int],
        response: list[int],
        top_k: int,
        progress: Progress = _no_progress,
        keep_for_continuations: bool = False,  # nothing to keep: the servers cache prefixes
        keep_student_pass: bool = False,  # nothing kept: the floor's repeated request measures the spread
        objectives: Any = None,  # none computed: top-K log-probs cannot give them (docs/objectives.md)
    ) -> tuple[ReplayResult, dict[str, Any]]:
        """`engine.replay` on the servers, and the estimator's record for the analysis."""
        pair, k = self.pair, max(self.k, top_k)
        T = len(response)
        progress("replay", 0, 2 * T)
        student = self._fan_out.submit(self.score, pair.student, student_context, response, k)
        if pair.shared and student_context == teacher_context:
            teacher_positions = student.result()  # same weights, same input: one request
        else:
            teacher_positions = self.score(pair.teacher, teacher_context, response, k)
        student_positions = student.result()
        progress("replay", 2 * T, 2 * T)
        result, rest = replay_from_positions(
            student_positions, teacher_positions, response, top_k, pair.vocab_size
        )
        noise = self.noise
        record = {
            "backend": self.name,
            "device": "vllm",  # the servers' own; their dtype read from their numbers (`noise.served_dtype`)
            "dtype": noise.dtype if noise else "unknown",
            "top_k_logprobs": k,
            "estimated": list(ESTIMATED_FIELDS),
            "estimator": {
                "method": "top-K lower bound: tokens known under both models, plus one rest bucket",
                "rest_mass": rest,
            },
            "noise": noise.as_dict() if noise else None,
        }
        if noise is not None:  # build_analysis puts these in the steps
            bound, floor = noise.logprob_bound, noise.logprob_floor
            record["per_step"] = noise_fields(
                student_positions, teacher_positions, bound, floor, pair.vocab_size
            )
        return result, record

    def replay_batch(
        self, items: list[BatchItem], top_k: int, keep_student_pass: bool = False, objectives: Any = None
    ) -> list[tuple[ReplayResult, dict[str, Any]]]:
        """Each line's `replay`, `lines_in_flight` at a time (the servers batch them)."""
        with ThreadPoolExecutor(
            min(len(items), self.lines_in_flight), thread_name_prefix="vrollout-line"
        ) as pool:
            return list(pool.map(lambda item: self.replay(*item, top_k), items))

    def generate(
        self,
        context: list[int],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        progress: Progress = _no_progress,
    ) -> list[int]:
        """`engine.generate` on the student's server (the end-of-sequence token, if produced, kept)."""
        model: RemoteModel = self.pair.student  # type: ignore[assignment]
        progress("generate", 0, max_new_tokens)
        params: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": temperature}
        if temperature > 0:
            params.update(top_p=top_p, seed=seed)
        choice = self.complete(model, context, skip_special_tokens=False, **params)
        progress("generate", max_new_tokens, max_new_tokens)
        return _with_eos(choice, model.eos)

    def continuations(
        self,
        context: list[int],
        response: list[int],
        k: int,
        progress: Progress = _no_progress,
        *,
        positions: list[int] | None = None,
        stage: str = "continuations",
        replayed: ReplayResult | None = None,
    ) -> list[list[int]]:
        """`continuations.continuations_from_every_prefix` on the teacher's server: one greedy
        request per prefix, all sent at once (the server's prefix cache shares the context).
        With the replay (the server's top-1 at every step), only the prefixes where the response
        leaves it are requested; the others follow from them (`pipeline.branches.from_divergences`)."""
        model: RemoteModel = self.pair.teacher  # type: ignore[assignment]
        positions = list(range(len(response))) if positions is None else positions

        def decode(wanted: list[int]) -> list[list[int]]:
            progress(stage, 0, len(wanted))
            futures = [
                self._fan_out.submit(
                    self.complete,
                    model,
                    context + response[:t],
                    max_tokens=k,
                    temperature=0.0,
                    skip_special_tokens=False,
                )  # fmt: skip
                for t in wanted
            ]
            results = []
            for i, future in enumerate(futures):
                results.append(cut_at_eos(_with_eos(future.result(), model.eos)[:k], model.eos))
                progress(stage, i + 1, len(wanted))
            return results

        if replayed is None:
            return decode(positions)
        return from_divergences(decode, response, replayed.teacher_top1_id, positions, k, model.eos)

    def pedagogical_rollout(
        self,
        student_context: list[int],
        teacher_context: list[int],
        policy: Policy,
        reference: str | None = None,
        progress: Progress = _no_progress,
    ) -> dict[str, Any]:
        """`pedagogical.pedagogical_rollout` on the servers (`_Stepper`). Greedy rollouts equal
        the local engine's (within the server's float noise); sampled ones use the server's RNG."""
        stepper = _Stepper(self, student_context, teacher_context, policy)
        steps = rollout_steps(stepper, policy, self.pair.student.eos, progress)  # type: ignore[attr-defined]
        return summarize_rollout(self.pair, steps, policy, reference)


class _Stepper:
    """`pipeline.pedagogical.Stepper` on the servers. Per step: the student's proposal (its sampler,
    greedy or seeded), then the teacher's log-prob and rank of the proposal and its top-1 (prompt
    log-probs of the prefix + proposal); one more student request where the teacher substitutes,
    for the student's log-prob of the substitute."""

    def __init__(
        self, backend: VLLMBackend, student_context: list[int], teacher_context: list[int], policy: Policy
    ) -> None:
        self.backend, self.policy = backend, policy
        self.student_context, self.teacher_context = student_context, teacher_context
        self.taken: list[int] = []

    def step(self, i: int) -> dict[str, Any]:
        backend, policy, taken = self.backend, self.policy, self.taken
        student, teacher = backend.pair.student, backend.pair.teacher
        proposal, proposal_logprob = backend.next_token(
            student, self.student_context + taken, policy.temperature, policy.top_p, policy.seed + i
        )
        verdict = backend.last_position(teacher, self.teacher_context + taken + [proposal])
        top1, top1_logprob = verdict.top(1)[0]

        def logprobs(token: int) -> tuple[float, float]:
            if token == proposal:
                return proposal_logprob, verdict.logprobs[proposal]
            substitute = backend.last_position(student, self.student_context + taken + [token])
            return substitute.logprobs[token], top1_logprob

        return pedagogical_step(
            policy, proposal, math.exp(verdict.logprobs[proposal]), verdict.ranks[proposal], top1, logprobs
        )

    def take(self, token: int) -> None:
        self.taken.append(token)


def _with_eos(choice: dict[str, Any], eos: set[int]) -> list[int]:
    """The generated ids; vLLM leaves a final end-of-sequence token out of `token_ids` in some
    versions, so a completion that stopped on one gets it back."""
    ids = list(choice.get("token_ids") or [])
    if choice.get("finish_reason") == "stop" and eos and (not ids or ids[-1] not in eos):
        reason = choice.get("stop_reason")
        ids.append(reason if isinstance(reason, int) else min(eos))
    return ids
