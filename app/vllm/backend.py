"""The vLLM backend: scoring and generation through vLLM's OpenAI-compatible server.

Scoring sends `context + response` ids as the prompt of `/v1/completions` with `max_tokens: 1`
and `prompt_logprobs: K`; `topk.py` turns the answer into the engine's per-step arrays.
Generation (the student's response, teacher continuations, recovery, the pedagogical rollout)
goes to the same servers, greedy where the local engine is greedy. Tokenization stays local
(the model's own tokenizer, from a folder), checked against every server at start-up.
Knows nothing about HTTP routes or storage; `vllm_client.py` does the transport.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vrollout.config import DEFAULT_MODEL, Settings
from vrollout.core.errors import BadTrajectory, ModelMismatch
from vrollout.core.replay import Progress, ReplayResult, _no_progress
from vrollout.local.continuations import cut_at_eos, from_divergences
from vrollout.local.models import LoadedModel, ModelPair, default_model_folder
from vrollout.vllm.client import ReplicaPool, ReplicasUnavailable
from vrollout.vllm.topk import BadServerAnswer, Position, parse_positions, replay_from_positions

# Text whose tokenization every server must reproduce: words, digits, code, whitespace runs,
# accents and CJK, emoji (byte fallback), and the chat template's special tokens.
PROBE = (
    "The quick brown fox, 17*23 = 391.\n\tdef f(x):\n        return x ** 2  # ok\n"
    "naïve café Ωμέγα 東京 🙂 <|im_start|>user\nhi<|im_end|>"
)


@dataclass
class RemoteModel(LoadedModel):
    """A model served by vLLM replicas: the tokenizer is local, the weights are not."""

    pool: ReplicaPool | None = None
    served_name: str = ""  # the server's model id (its `/v1/models`)
    eos: set[int] = field(default_factory=set)

    @property
    def device(self) -> str:  # type: ignore[override]
        return "vllm " + " ".join(r.url for r in self.pool.replicas) if self.pool else "vllm"

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return "as served"


def load_tokenizer(settings: Settings) -> tuple[Any, Path | str]:
    """The tokenizer named by VROLLOUT_TOKENIZER, else the student setting's (the embedded
    default's converted folder, a folder, or a Hugging Face id)."""
    from transformers import AutoTokenizer

    spec = settings.tokenizer or settings.student
    path: Path | str = default_model_folder(settings.cache_dir) if spec == DEFAULT_MODEL else spec
    return AutoTokenizer.from_pretrained(path, trust_remote_code=settings.trust_remote_code), path


def _eos_ids(tokenizer: Any, path: Path | str) -> set[int]:
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except (OSError, ValueError):
        eos = None
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list) else {eos}


def check_server(pool: ReplicaPool, tokenizer: Any) -> str:
    """The served model id, after checking that every replica that answers tokenizes the probe
    and decodes a spread of ids exactly as the local tokenizer does."""
    import httpx

    local_ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    V = len(tokenizer)
    sample = sorted({0, 1, 2, V - 1, V - 2, *range(3, V, max(1, V // 61))})
    local_text = tokenizer.decode(sample, skip_special_tokens=False)
    names, answered = set(), 0
    with httpx.Client(timeout=30) as client:
        for replica in pool.replicas:
            try:
                name = client.get(replica.url + "/v1/models").json()["data"][0]["id"]
                ids = client.post(
                    replica.url + "/tokenize",
                    json={"model": name, "prompt": PROBE, "add_special_tokens": False},
                ).json()["tokens"]
                text = client.post(
                    replica.url + "/detokenize", json={"model": name, "tokens": sample}
                ).json()["prompt"]
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
                replica.last_error = f"start-up check failed: {exc}"
                replica.failures_in_a_row, replica.errors = 1, 1
                replica.down_until = time.monotonic() + 1.0  # tried again by a later request
                continue
            answered += 1
            names.add(name)
            if ids != local_ids or text != local_text:
                raise ModelMismatch(
                    f"the {pool.role} server {replica.url} ({name}) does not share the local "
                    "tokenizer's vocabulary: token ids would mean different tokens"
                )
    if not answered:
        raise ReplicasUnavailable(f"no {pool.role} server answered: {[r.url for r in pool.replicas]}")
    if len(names) > 1:
        raise ModelMismatch(f"the {pool.role} replicas serve different models: {sorted(names)}")
    return names.pop()


def load_remote_pair(settings: Settings) -> tuple[ModelPair, VLLMBackend]:
    """The student and teacher as served by vLLM, checked to share the local vocabulary."""
    if not settings.teacher_urls:
        raise ValueError("the vllm backend needs at least one teacher URL (--teacher-url)")

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
        eos = _eos_ids(tokenizer, path)

    def remote(role: str, urls: list[str]) -> RemoteModel:
        pool = teacher_pool if role == "teacher" else pool_of(role, urls)
        served = check_server(pool, tokenizer)
        name = Path(served).name if served.startswith("/") else served  # a folder: its name
        return RemoteModel(name, " ".join(urls), None, tokenizer, pool, served, eos)

    teacher = remote("teacher", settings.teacher_urls)
    shared = not settings.student_urls or settings.student_urls == settings.teacher_urls
    student = teacher if shared else remote("student", settings.student_urls)
    pair = ModelPair(student, teacher, shared, len(tokenizer), settings.teacher_template)
    if "{prompt}" not in pair.teacher_template or "{privileged}" not in pair.teacher_template:
        raise ValueError("the teacher template must contain {prompt} and {privileged}")
    backend = VLLMBackend(pair, settings.vllm_logprobs, settings.vllm_concurrency)
    for model in {id(student): student, id(teacher): teacher}.values():
        try:  # K log-probs must be allowed by the server's --max-logprobs
            backend.score(model, [tokenizer.eos_token_id or 0], [tokenizer.eos_token_id or 0], backend.k)
        except BadTrajectory as exc:
            backend.close()
            raise ValueError(
                f"{exc.message}: start the server with --max-logprobs {backend.k} or more, or lower "
                "VROLLOUT_VLLM_LOGPROBS"
            ) from None
    return pair, backend


class VLLMBackend:
    """Scoring and generation for a remote `ModelPair`. Thread-safe; requests that do not
    depend on each other (student and teacher scoring, one continuation per prefix) are sent
    concurrently, bounded by each pool's per-replica limit."""

    def __init__(self, pair: ModelPair, k: int, concurrency: int) -> None:
        self.pair, self.k = pair, k
        pools = {id(m.pool): m.pool for m in (pair.student, pair.teacher)}  # type: ignore[attr-defined]
        self.pools: list[ReplicaPool] = list(pools.values())
        fan_out = concurrency * sum(len(p.replicas) for p in self.pools) + 2
        self._fan_out = ThreadPoolExecutor(max_workers=fan_out, thread_name_prefix="vrollout-vllm")

    def close(self) -> None:
        self._fan_out.shutdown(wait=False, cancel_futures=True)
        for pool in self.pools:
            pool.close()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "vllm",
            "top_k_logprobs": self.k,
            "replicas": [r for pool in self.pools for r in pool.describe()],
        }

    def events_since(self, since: float) -> list[dict[str, Any]]:
        """Replica failures (each retried elsewhere unless it was the last attempt) since `since`."""
        events = [e for pool in self.pools for e in list(pool.events) if e.at >= since]
        return [e.as_dict() for e in sorted(events, key=lambda e: e.at)]

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

    # The engine's operations.
    def replay(
        self,
        student_context: list[int],
        teacher_context: list[int],
        response: list[int],
        top_k: int,
        progress: Progress = _no_progress,
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
        record = {
            "backend": "vllm",
            "top_k_logprobs": k,
            "estimated": ["reverse_kl", "forward_kl", "student_entropy", "teacher_entropy"],
            "estimator": {
                "method": "top-K lower bound: tokens known under both models, plus one rest bucket",
                "rest_mass": rest,
            },
        }
        return result, record

    def generate(
        self,
        model: RemoteModel,
        context: list[int],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        progress: Progress = _no_progress,
    ) -> list[int]:
        """`engine.generate` on the server (the end-of-sequence token, if produced, kept)."""
        progress("generate", 0, max_new_tokens)
        params: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": temperature}
        if temperature > 0:
            params.update(top_p=top_p, seed=seed)
        choice = self.complete(model, context, skip_special_tokens=False, **params)
        progress("generate", max_new_tokens, max_new_tokens)
        return _with_eos(choice, model.eos)

    def continuations(
        self,
        model: RemoteModel,
        context: list[int],
        response: list[int],
        k: int,
        progress: Progress = _no_progress,
        vocab_size: int | None = None,
        positions: list[int] | None = None,
        stage: str = "continuations",
        top1: list[int] | None = None,
    ) -> list[list[int]]:
        """`continuations.continuations_from_every_prefix` on the server: one greedy request
        per prefix, all sent at once (the server's prefix cache shares the context). With the
        teacher's `top1` at every step (the replay's), only the prefixes where the response
        leaves it are requested; the others follow from them (`continuations.from_divergences`)."""
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

        if top1 is None:
            return decode(positions)
        return from_divergences(decode, response, top1, positions, k, model.eos)

    def next_token(self, model: RemoteModel, prompt: list[int], temperature: float, top_p: float, seed: int):
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


def _with_eos(choice: dict[str, Any], eos: set[int]) -> list[int]:
    """The generated ids; vLLM leaves a final end-of-sequence token out of `token_ids` in some
    versions, so a completion that stopped on one gets it back."""
    ids = list(choice.get("token_ids") or [])
    if choice.get("finish_reason") == "stop" and eos and (not ids or ids[-1] not in eos):
        reason = choice.get("stop_reason")
        ids.append(reason if isinstance(reason, int) else min(eos))
    return ids


def pedagogical_rollout_remote(
    backend: VLLMBackend,
    pair: ModelPair,
    student_context: list[int],
    teacher_context: list[int],
    policy: Any,
    reference: str | None = None,
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """`pedagogical.pedagogical_rollout` on the servers. Per step: the student's proposal (its
    sampler, greedy or seeded), then the teacher's log-prob and rank of the proposal and its
    top-1 (prompt log-probs of the prefix + proposal); one more student request where the
    teacher substitutes, for the student's log-prob of the substitute. Greedy rollouts equal
    the local engine's (within the server's float noise); sampled ones use the server's RNG."""
    from vrollout.local.pedagogical import summarize_rollout

    student, teacher = pair.student, pair.teacher
    taken: list[int] = []
    steps: list[dict[str, Any]] = []
    for i in range(policy.max_new_tokens):
        proposal, proposal_logprob = backend.next_token(
            student, student_context + taken, policy.temperature, policy.top_p, policy.seed + i
        )
        verdict = backend.last_position(teacher, teacher_context + taken + [proposal])
        top1, top1_logprob = verdict.top(1)[0]
        teacher_prob = math.exp(verdict.logprobs[proposal])
        rank = verdict.ranks[proposal]
        unacceptable = teacher_prob < policy.threshold or (
            policy.max_rank is not None and rank > policy.max_rank
        )
        token = top1 if unacceptable else proposal
        if token == proposal:
            student_logprob, teacher_logprob = proposal_logprob, verdict.logprobs[proposal]
        else:
            student_logprob = backend.last_position(student, student_context + taken + [token]).logprobs[
                token
            ]
            teacher_logprob = top1_logprob
        steps.append(
            {
                "proposal": proposal,
                "token": token,
                "intervened": unacceptable,
                "proposal_teacher_prob": teacher_prob,
                "proposal_teacher_rank": rank,
                "student_logprob": student_logprob,
                "teacher_logprob": teacher_logprob,
            }
        )
        progress("pedagogical", i + 1, policy.max_new_tokens)
        if token in student.eos:  # type: ignore[attr-defined]
            break
        taken.append(token)
    return summarize_rollout(pair, steps, policy, reference)
