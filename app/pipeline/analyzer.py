"""The analysis pipeline: validate, build contexts, generate if needed, replay, store.

`Analyzer` is what the API, the CLI and notebooks call. It is synchronous; the web app runs it
on `jobs.worker.ModelWorker`, one job at a time, off the event loop. No HTTP here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Protocol

from vrollout.config import Settings
from vrollout.errors import BadTrajectory, ModelOutOfMemory, TooLong, VRError
from vrollout.ids import new_id, now
from vrollout.inputs.teacher_context import SiblingIndex, wants_sibling
from vrollout.inputs.teacher_context import resolve as resolve_teacher_context
from vrollout.inputs.trajectories import LineError, Trajectory, to_trajectory
from vrollout.inputs.validation import RequestModels, check_lengths, open_keys, request_models, validate
from vrollout.metrics.localization import is_localization_line, localization_line
from vrollout.metrics.objectives import ObjectiveSpec
from vrollout.pipeline.assembly import build_analysis
from vrollout.pipeline.backend import Backend, Models, load_backend, local_backend
from vrollout.pipeline.contexts import Contexts, TokenLimit, build_contexts, check_ids
from vrollout.pipeline.cross import check_cross_request, cross_analysis, refuse_across
from vrollout.pipeline.pedagogical import threshold_sweep
from vrollout.pipeline.preflight import (
    add_preflight,
    bare_teacher_ids,
    build_preflight,
    noise_floor,
    noise_floor_skipped,
    same_vocabulary,
    student_as_teacher,
)
from vrollout.pipeline.recovery import recovery, turn_continuations
from vrollout.pipeline.replay import Progress, ReplayResult, _no_progress
from vrollout.pipeline.turns import scored_flags, student_positions
from vrollout.rules import Policy
from vrollout.schema.requests import AnalyzeRequest, GenerationOptions, PedagogicalRequest
from vrollout.verdicts.math_check import Budget

PEDAGOGICAL_MAX_NEW_TOKENS = 128  # a pedagogical rollout's default length (the Upload form shows it)


@dataclass
class Options:
    top_k: int = 5
    continuation_tokens: int = 0
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    recovery: bool = False
    recovery_max_new_tokens: int = 64
    noise_floor: bool = True
    objectives: ObjectiveSpec = field(default_factory=ObjectiveSpec)


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def options_from(request: AnalyzeRequest, settings: Settings) -> Options:
    """The analysis options of a validated request, with the defaults that depend on the settings."""
    if request.recovery and request.reference_answer in (None, ""):
        raise BadTrajectory(
            "recovery needs a reference_answer to check the teacher's continuations against",
            field="reference_answer",
        )
    gen = request.generation or GenerationOptions()
    return Options(
        top_k=_given(request.top_k, min(5, settings.max_top_k)),
        continuation_tokens=request.continuation_tokens,
        max_new_tokens=_given(gen.max_new_tokens, min(256, settings.max_new_tokens)),
        temperature=gen.temperature,
        top_p=gen.top_p,
        seed=gen.seed,
        recovery=request.recovery,
        recovery_max_new_tokens=_given(request.recovery_max_new_tokens, min(64, settings.max_new_tokens)),
        noise_floor=settings.noise_floor if request.noise_floor is None else request.noise_floor,
        objectives=objective_spec(request),
    )


def objective_spec(request: AnalyzeRequest) -> ObjectiveSpec:
    """The request's distillation objectives and their options, defaults filled in."""
    default = ObjectiveSpec()
    return ObjectiveSpec(
        names=default.names if request.objectives is None else tuple(dict.fromkeys(request.objectives)),
        k=_given(request.objective_k, default.k),
        jsd_beta=default.jsd_beta if request.jsd_beta is None else float(request.jsd_beta),
        clip_tau=default.clip_tau if request.clip_tau is None else float(request.clip_tau),
        entropy_threshold=request.tip_entropy_threshold,
        divergence_threshold=request.tip_divergence_threshold,
    )


def analysis_cost(options: Options, response_tokens: int | None) -> int:
    """Tokens an analysis could decode, known before any model work: the generated response
    (`response_tokens` None) and, as if every response token branched, its continuations and
    recovery continuations (an upper bound: only divergences are decoded)."""
    length = options.max_new_tokens if response_tokens is None else response_tokens
    generated = options.max_new_tokens if response_tokens is None else 0
    per_token = options.continuation_tokens + (options.recovery_max_new_tokens if options.recovery else 0)
    return generated + per_token * length


@dataclass
class PreparedRollout:
    student_ids: list[int]
    teacher_ids: list[int]
    policy: Policy
    reference: str | None
    sweep: list[float] | None
    analysis_id: str | None


@dataclass
class Prepared:
    """A request that passed every check that needs no forward pass."""

    traj: Trajectory
    ctx: Contexts
    options: Options


def with_defaults(obj: Any, options: dict[str, Any], privileged: str | None) -> Any:
    """A file line with the upload's options filled in where the line has none of its own;
    privileged text only for text formats (it cannot be spliced into token ids), recovery only
    for lines that carry a reference answer."""
    if not isinstance(obj, dict):
        return obj
    obj = {**options, **obj}
    if privileged and "privileged" not in obj and "prompt_ids" not in obj:
        obj["privileged"] = privileged
    if obj.get("recovery") and not obj.get("reference_answer"):
        obj["recovery"] = False
    return obj


def check_budget(cost: int, limit: int, setting: str, formula: str) -> None:
    """Refuse, before any model work, a request that could ask for more than its budget."""
    if cost > limit:
        raise TooLong(
            f"this request could decode up to {cost} tokens ({formula}), over the budget of "
            f"{limit} ({setting}); ask for fewer tokens",
            cost=cost,
            limit=limit,
        )


@contextmanager
def out_of_memory(what: str) -> Iterator[None]:
    """Out of memory in the middle of model work (the backend's `ModelOutOfMemory`: the local
    one frees the accelerator's cache first; or the host's `MemoryError`): the request fails with
    a clear 503 that says what ran out, and the server goes on."""
    try:
        yield
        return
    except (ModelOutOfMemory, MemoryError):
        pass  # leave the except block first: its traceback holds the request's tensors
    raise ModelOutOfMemory(
        f"the model ran out of memory on {what}; retry with a shorter input "
        "(fewer tokens, a smaller top_k, fewer continuation tokens)"
    )


def student_floor(
    prep: Prepared, main: ReplayResult, bare: ReplayResult, *args: Any, **kwargs: Any
) -> dict[str, Any]:
    """`preflight.noise_floor` over the tokens the student wrote (a conversation's context tokens,
    a tool's answer, are not the signal the floor is compared with)."""
    scored = scored_flags(prep.ctx.response_mask, len(main.reverse_kl))
    if not all(scored):
        main, bare = student_positions(main, scored), student_positions(bare, scored)
    return noise_floor(main, bare, *args, **kwargs)


class AnalysisStore(Protocol):
    """Where analyses are kept (`storage.store.Store` is one): the pipeline saves each analysis
    it makes and reads one back for a pedagogical rollout from its `analysis_id`."""

    def save(self, analysis: dict[str, Any]) -> None: ...

    def get(self, analysis_id: str) -> dict[str, Any]: ...


class Analyzer:
    """A backend (its models) + settings + (optionally) a store: turns trajectories into
    analyses. Which backend runs the models is `backend`'s business alone (`pipeline.backend`)."""

    def __init__(
        self,
        pair: Models,
        settings: Settings,
        store: AnalysisStore | None = None,
        backend: Backend | None = None,
    ) -> None:
        """`backend`: where `pair` runs; by default here (`LocalBackend`). `store`: where each
        analysis is saved (None: nowhere)."""
        self.pair, self.settings, self.store = pair, settings, store
        self.backend: Backend = backend or local_backend(pair, settings)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, store: AnalysisStore | None = None) -> Analyzer:
        """Load the configured models (once, on the backend `settings.backend` names); for
        notebooks, the CLI and the server. `store`: where analyses are saved (the caller opens
        it first, so that a damaged database fails before any loading)."""
        settings = settings or Settings()
        backend = load_backend(settings)
        settings = getattr(backend, "fit_settings", lambda given: given)(settings)  # sizes for the device
        return cls(backend.pair, settings, store, backend)

    @property
    def models(self) -> RequestModels:
        """The request models with this analyzer's limits: the one validation path of the API,
        files, the CLI and notebooks (`inputs.validation`)."""
        return request_models(self.settings)

    def prepare(self, obj: Any) -> Prepared:
        """Validate (a JSON object, or a request the API validated already), render the contexts
        and enforce every limit, before any model work. Text over its character cap is refused
        before it is tokenized, and tokenizing stops once a context is over its limit."""
        request = validate(self.models.analyze, obj)
        traj = resolve_teacher_context(to_trajectory(request))
        check_lengths(traj, self.models.limits)
        options = options_from(request, self.settings)
        self.backend.check_top_k(options.top_k)
        check_cross_request(self.pair, traj, options.continuation_tokens, options.recovery)
        ctx = self.contexts(traj)
        response_tokens = None if ctx.response_ids is None else len(ctx.response_ids)
        check_budget(
            analysis_cost(options, response_tokens),
            self.settings.max_analysis_cost,
            "VROLLOUT_MAX_ANALYSIS_COST",
            "generated tokens + (continuation_tokens + recovery_max_new_tokens) x response tokens",
        )
        return Prepared(traj, ctx, options)

    def prepare_line(
        self,
        obj: Any,
        options: dict[str, Any],
        privileged: str | None,
        siblings: tuple[int, SiblingIndex] | None = None,
    ) -> tuple[Prepared, Any, list[str]]:
        """A line of a file (an upload, the CLI's): `prepare`d with the file's options filled in.
        Unlike the API, a key that is not a field is kept in `meta` unless it is a near miss of
        one. Returns the prepared line, the line as a job stores it, and its unknown keys. A line
        in ProcessBench's shape (`steps`, `label`) becomes the trajectory of its joined steps.
        `siblings`: the line's number and its file's index; a line asking for a sibling gets the
        one the rule picks written into its `sibling` field (inputs.teacher_context)."""
        line, unknown = self._file_line(obj, options, privileged)
        if wants_sibling(line):
            if siblings is None:
                raise BadTrajectory(
                    "teacher_context sibling: the file was not indexed for siblings (give "
                    "teacher_context sibling for the whole file: --teacher-context sibling, or "
                    'analyze_many(..., teacher_context="sibling"))',
                    field="teacher_context",
                )
            number, index = siblings
            chosen = index.pick(number, to_trajectory(validate(self.models.analyze, line)))
            line = {**line, "sibling": chosen.as_field()}
        return self.prepare(line), line, unknown

    def _file_line(self, obj: Any, options: dict[str, Any], privileged: str | None) -> tuple[Any, list[str]]:
        if is_localization_line(obj):
            obj = localization_line(obj)
        line, unknown = open_keys(obj, self.models.analyze)
        return with_defaults(line, options, privileged), unknown

    def index_siblings(
        self,
        lines: Iterable[tuple[int, Any]],
        options: dict[str, Any],
        privileged: str | None,
        budget: Budget | None = None,
    ) -> SiblingIndex:
        """A file's sibling index (inputs.teacher_context): its valid lines' prompts and successful
        responses, in one pass (validation only: nothing is tokenized). Bad lines are skipped here;
        they are refused with their reason when they are prepared. `budget`: what the file's
        math-verify checks may spend (an upload's, verdicts.math_check.Budget)."""
        index = SiblingIndex(verdict_deadline_s=self.settings.math_verify_timeout_s, budget=budget)
        for number, obj in lines:
            if isinstance(obj, LineError):
                continue
            try:
                line, _ = self._file_line(obj, options, privileged)
                index.add(number, to_trajectory(validate(self.models.analyze, line)))
            except VRError:
                continue
        return index

    def prepare_lines(
        self,
        lines: list[tuple[int, Any]],
        options: dict[str, Any],
        privileged: str | None,
        unknown: dict[str, list[int]],
        siblings: SiblingIndex | None = None,
    ) -> tuple[list[tuple[int, Prepared]], list[tuple[int, VRError]]]:
        """Numbered lines of a file, each `prepare_line`d on its own: the prepared ones and the
        errors of the others. The keys kept in meta are added to `unknown` (key: line numbers).
        `siblings`: the whole file's index, where lines ask for siblings."""
        prepared: list[tuple[int, Prepared]] = []
        failed: list[tuple[int, VRError]] = []
        for number, obj in lines:
            try:
                where = None if siblings is None else (number, siblings)
                prep, _, keys = self.prepare_line(obj, options, privileged, where)
            except VRError as exc:
                failed.append((number, exc))
                continue
            prepared.append((number, prep))
            for key in keys:
                unknown.setdefault(key, []).append(number)
        return prepared, failed

    def run_prepared(
        self, prepared: list[tuple[int, Prepared]], extra: Callable[[int], dict[str, Any]] | None = None
    ) -> Iterator[list[tuple[int, dict[str, Any] | VRError]]]:
        """Prepared lines in the planned batches (not stored): each group's lines, numbered, with
        their analysis or error, group by group. `extra(number)`: fields added to a line's analysis."""
        groups = self.plan_batches(prepared)
        extras = [[extra(number) if extra else {} for number, _ in group] for group in groups]
        for group, results in self.run_groups(groups, extras):
            yield [(number, result) for (number, _), result in zip(group, results, strict=True)]

    def contexts(self, traj: Trajectory) -> Contexts:
        """Both contexts and the response ids, with every token id checked and each limit
        enforced as the text is tokenized."""
        for name, ids in (
            ("prompt_ids", traj.prompt_ids),
            ("teacher_prompt_ids", traj.teacher_prompt_ids),
            ("response_ids", traj.response_ids),
        ):
            if ids is not None:
                teacher_side = name == "teacher_prompt_ids" and self.pair.cross_tokenizer
                vocab = (self.pair.teacher_vocab_size if teacher_side else None) or self.pair.vocab_size
                check_ids(name, ids, vocab)
        return build_contexts(
            traj, self.pair, self.settings.max_context_tokens, self.settings.max_response_tokens
        )

    def run(
        self,
        prep: Prepared,
        progress: Progress = _no_progress,
        store: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Generate (if no response was given), replay, assemble and (by default) store one
        analysis. `extra`: fields added to the analysis (e.g. the job and line it came from)."""
        with out_of_memory("this request"):
            return self._run(prep, progress, store, extra or {})

    def _run(self, prep: Prepared, progress: Progress, store: bool, extra: dict[str, Any]) -> dict[str, Any]:
        ctx, opts = prep.ctx, prep.options
        generation = None
        response = ctx.response_ids
        if response is None:
            generation = {k: asdict(opts)[k] for k in ("max_new_tokens", "temperature", "top_p", "seed")}
            response = self.backend.generate(
                ctx.student_ids,
                max_new_tokens=opts.max_new_tokens,
                temperature=opts.temperature,
                top_p=opts.top_p,
                seed=opts.seed,
                progress=progress,
            )
            if not response:
                raise BadTrajectory("the student generated an empty response")
        if self.pair.cross_tokenizer:  # a teacher with another tokenizer: spans of text (pipeline/cross.py)
            analysis = cross_analysis(
                self.pair,
                self.backend,
                prep.traj,
                ctx,
                response,
                opts.top_k,
                generation,
                progress,
                extra,
                self.settings.math_verify_timeout_s,
            )
            floor = noise_floor_skipped("the teacher has another tokenizer: no per-token KL to compare")
            add_preflight(analysis, build_preflight(prep.traj, ctx, self.pair, analysis, floor))
            if store and self.store is not None:
                self.store.save(analysis)
            progress("done", 1, 1)
            return analysis
        result, record = self.backend.replay(
            ctx.student_ids,
            ctx.teacher_ids,
            response,
            opts.top_k,
            progress,
            keep_for_continuations=bool(opts.continuation_tokens),
            keep_student_pass=self._keep_student_pass([prep]),
            objectives=opts.objectives,
        )
        return self._assemble(prep, response, result, generation, progress, store, {**record, **extra})

    def _assemble(
        self,
        prep: Prepared,
        response: list[int],
        result: ReplayResult,
        generation: dict[str, Any] | None,
        progress: Progress,
        store: bool,
        extra: dict[str, Any],
        floor: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Continuations and recovery (if asked for), then the analysis JSON with its preflight
        (`floor`: its noise floor, if already computed); stored if `store`."""
        ctx, opts = prep.ctx, prep.options
        # A conversation's context tokens (tool and user turns) are not the student's: no
        # continuation starts there, and each stops at the end of its turn (pipeline.turns).
        scored = scored_flags(ctx.response_mask, len(response))
        continuations = None
        if opts.continuation_tokens:
            continuations = turn_continuations(
                partial(self.backend.continuations, replayed=result),
                ctx.teacher_ids,
                response,
                opts.continuation_tokens,
                scored,
                progress,
            )
        result.teacher_cache = None  # not needed any more: free it before the rest
        extra = dict(extra)
        if opts.recovery:
            assert prep.traj.reference_answer is not None
            divergences = [
                t
                for t, (top1, y) in enumerate(zip(result.teacher_top1_id, response, strict=True))
                if top1 != y and scored[t]
            ]
            extra["recovery"] = recovery(
                self.pair,
                ctx.teacher_ids,
                response,
                result.reverse_kl,
                divergences,
                prep.traj.reference_answer,
                opts.recovery_max_new_tokens,
                partial(self.backend.continuations, replayed=result),
                progress,
                scored=scored,
            )
        analysis = build_analysis(
            analysis_id=new_id(),
            created_at=now(),
            pair=self.pair,
            traj=prep.traj,
            ctx=ctx,
            response_ids=response,
            result=result,
            top_k=opts.top_k,
            generation=generation,
            continuations=continuations,
            continuation_tokens=opts.continuation_tokens,
            extra=extra,
            verdict_deadline_s=self.settings.math_verify_timeout_s,
            objectives=opts.objectives,
        )
        if "recovery" in extra:
            rec = extra["recovery"]
            analysis["summary"]["last_recoverable"] = rec["last_recoverable"]
            analysis["summary"]["reverse_kl_share_after_last_recoverable"] = rec[
                "reverse_kl_share_after_last_recoverable"
            ]
        if floor is None:
            floor = self.noise_floors([prep], [response], [result], progress)[0]
        add_preflight(analysis, build_preflight(prep.traj, ctx, self.pair, analysis, floor))
        if store and self.store is not None:
            self.store.save(analysis)
        progress("done", 1, 1)
        return analysis

    def _keep_student_pass(self, preps: list[Prepared]) -> bool:
        """Whether the replay should keep its student pass: a line's noise floor will run a bare
        replay on a backend that reads the student pass from the analysis's replay
        (`bare_replays`: the local engine), so that the student is not run twice."""
        if not hasattr(self.backend, "bare_replays") or self.pair.cross_tokenizer:
            return False
        return any(p.options.noise_floor and p.ctx.privileged for p in preps)

    def noise_floors(
        self,
        preps: list[Prepared],
        responses: list[list[int]],
        mains: list[ReplayResult],
        progress: Progress,
    ) -> list[dict[str, Any]]:
        """Each line's noise floor (pipeline.preflight): its response replayed once more with the
        teacher's context stripped of the privileged info (one padded batch for several lines on
        a backend that pads), against its analysis's replay `mains`. Frees the student passes
        the replays kept for it (`_keep_student_pass`)."""
        floors: list[dict[str, Any] | None] = [None] * len(preps)
        todo = []
        for i, prep in enumerate(preps):
            if not prep.options.noise_floor:
                floors[i] = noise_floor_skipped("not asked for (noise_floor false, or VROLLOUT_NOISE_FLOOR)")
            elif not same_vocabulary(self.pair):
                floors[i] = noise_floor_skipped("the teacher has another tokenizer: no per-token KL")
            elif not prep.ctx.privileged:  # the teacher's context has none: its replay is the bare one
                same = prep.ctx.teacher_ids == prep.ctx.student_ids
                floors[i] = student_floor(
                    preps[i], mains[i], mains[i], same, self.backend.remote, reused=True
                )
            else:
                todo.append(i)
        limit = TokenLimit("teacher context", self.settings.max_context_tokens, "VROLLOUT_MAX_CONTEXT_TOKENS")
        bare = {i: bare_teacher_ids(preps[i].traj, preps[i].ctx, self.pair, limit) for i in todo}
        for i in list(todo):
            # One set of weights on one local engine, given the student's own ids: the bare
            # teacher's pass IS the student's pass (deterministic here: the two-object test runs
            # it twice and gets 0 exactly), so it is read from the analysis's replay, not re-run.
            if self.pair.shared and not self.backend.remote and bare[i] == preps[i].ctx.student_ids:
                floors[i] = student_floor(
                    preps[i], mains[i], student_as_teacher(mains[i]), True, False, reused=True
                )
                todo.remove(i)
        progress("preflight", 0, 1)
        # The local engine kept the student's pass (deterministic there): only the teacher runs.
        bare_replays = getattr(self.backend, "bare_replays", None)
        kept = [i for i in todo if bare_replays and mains[i].student_hidden is not None]
        if bare_replays and kept:
            bares = bare_replays([mains[i] for i in kept], [(bare[i], responses[i]) for i in kept])
            for i, replay in zip(kept, bares, strict=True):
                same = bare[i] == preps[i].ctx.student_ids
                floors[i] = student_floor(preps[i], mains[i], replay, same, False, reused_student=True)
        todo = [i for i in todo if i not in kept]
        items = [(preps[i].ctx.student_ids, bare[i], responses[i]) for i in todo]
        if len(items) > 1 and self.backend.padded_batches:
            replays = self.backend.replay_batch(items, 1)
        else:
            replays = [self.backend.replay(*item, 1) for item in items]
        for i, (replay, record) in zip(todo, replays, strict=True):
            same = bare[i] == preps[i].ctx.student_ids
            floors[i] = student_floor(preps[i], mains[i], replay, same, bool(record.get("estimated")))
        progress("preflight", 1, 1)
        for main in mains:
            main.student_hidden = None  # the kept student pass (T, H): not needed any more
        return [f for f in floors if f is not None]

    def plan_batches(self, prepared: list[tuple[int, Prepared]]) -> list[list[tuple[int, Prepared]]]:
        """Short batchable lines (up to VROLLOUT_BATCH_MAX_SEQUENCE tokens) sorted by length and
        packed so that lines x longest stays under VROLLOUT_BATCH_TOKENS; every other line alone."""

        def length(item: tuple[int, Prepared]) -> int:
            ctx = item[1].ctx
            return max(len(ctx.student_ids), len(ctx.teacher_ids)) + len(ctx.response_ids or [])

        def short(item: tuple[int, Prepared]) -> bool:
            return (
                self.backend.padded_batches
                and not self.pair.cross_tokenizer  # each line aligned and replayed on its own
                and self.batchable(item[1])
                and length(item) <= self.settings.batch_max_sequence
            )

        batchable = sorted(filter(short, prepared), key=length)
        groups: list[list[tuple[int, Prepared]]] = []
        for item in batchable:
            if groups and (len(groups[-1]) + 1) * length(item) <= self.settings.batch_tokens:
                groups[-1].append(item)
            else:
                groups.append([item])
        return groups + [[x] for x in prepared if not short(x)]

    def run_group(
        self, group: list[tuple[int, Prepared]], extras: list[dict[str, Any]]
    ) -> list[dict[str, Any] | VRError]:
        """A planned group: one padded batch, or lines run the ordinary way. Each line gets its
        analysis or its error; a batch that fails (e.g. out of memory) is retried line by line,
        so one line's problem never costs its neighbours."""
        if len(group) > 1:
            try:
                return list(self.run_batch([prep for _, prep in group], extras))
            except VRError:
                pass
        results: list[dict[str, Any] | VRError] = []
        for (_, prep), extra in zip(group, extras, strict=True):
            try:
                results.append(self.run(prep, store=False, extra=extra))
            except VRError as exc:
                results.append(exc)
        return results

    def run_groups(
        self, groups: list[list[tuple[int, Prepared]]], extras: list[list[dict[str, Any]]]
    ) -> Iterator[tuple[list[tuple[int, Prepared]], list[dict[str, Any] | VRError]]]:
        """`run_group` over planned groups, results in order; `lines_in_flight` groups at once."""
        if self.lines_in_flight() == 1:  # on this thread, one after the other
            for group, extra in zip(groups, extras, strict=True):
                yield group, self.run_group(group, extra)
            return
        with ThreadPoolExecutor(self.lines_in_flight(), thread_name_prefix="vrollout-line") as pool:
            yield from zip(groups, pool.map(self.run_group, groups, extras), strict=True)

    def lines_in_flight(self) -> int:
        """Lines a job or the CLI runs at once (the backend's: one here; on vLLM, enough to fill
        every replica)."""
        return self.backend.lines_in_flight

    @staticmethod
    def batchable(prep: Prepared) -> bool:
        """Given a response and no per-prefix extras, an analysis can share a padded batch."""
        opts = prep.options
        return prep.ctx.response_ids is not None and not opts.continuation_tokens and not opts.recovery

    def run_batch(self, preps: list[Prepared], extras: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Several batchable analyses in one padded pass per model (not stored: the job runner
        stores them with their lines). Each equals its own `run` within float tolerance."""
        specs = {p.options.objectives for p in preps}
        if len(specs) > 1:  # lines asking for other objectives: one batch per kind
            by_line: dict[int, dict[str, Any]] = {}
            for spec in specs:
                picked = [i for i, p in enumerate(preps) if p.options.objectives == spec]
                done = self.run_batch([preps[i] for i in picked], [extras[i] for i in picked])
                by_line.update(zip(picked, done, strict=True))
            return [by_line[i] for i in range(len(preps))]
        items = [(p.ctx.student_ids, p.ctx.teacher_ids, p.ctx.response_ids) for p in preps]
        top_k = max(p.options.top_k for p in preps)
        with out_of_memory("a batch"):
            results = self.backend.replay_batch(
                items, top_k, keep_student_pass=self._keep_student_pass(preps), objectives=specs.pop()
            )
            floors = self.noise_floors(
                preps, [item[2] for item in items], [result for result, _ in results], _no_progress
            )
        analyses = []
        for prep, (result, record), extra, floor in zip(preps, results, extras, floors, strict=True):
            k = prep.options.top_k
            for name in (
                "teacher_topk_ids",
                "teacher_topk_logprobs",
                "student_topk_ids",
                "student_topk_logprobs",
                "teacher_logprob_at_student_topk",
            ):
                setattr(result, name, [row[:k] for row in getattr(result, name)])
            assert prep.ctx.response_ids is not None
            analyses.append(
                self._assemble(
                    prep, prep.ctx.response_ids, result, None, _no_progress, False, {**record, **extra}, floor
                )
            )
        return analyses

    def prepare_pedagogical(self, obj: Any) -> PreparedRollout:
        """Validate a pedagogical request: a prompt (any text format, or ids) or an analysis id."""
        request = validate(self.models.pedagogical, obj)
        reference = request.reference_answer
        if request.analysis_id is not None:
            if self.store is None:
                raise BadTrajectory("analysis_id needs the database")
            stored = self.store.get(request.analysis_id)
            s_ids, t_ids = stored["student"]["context_ids"], stored["teacher"]["context_ids"]
            if reference in (None, ""):
                reference = stored["trajectory"].get("reference_answer")
        else:
            traj = to_trajectory(request)
            check_lengths(traj, self.models.limits)
            ctx = self.contexts(traj)
            s_ids, t_ids, reference = ctx.student_ids, ctx.teacher_ids, traj.reference_answer
        if reference is not None:
            reference = str(reference)
        policy, sweep = self.pedagogical_policy(request)
        return PreparedRollout(s_ids, t_ids, policy, reference, sweep, request.analysis_id)

    def pedagogical_policy(self, request: PedagogicalRequest) -> tuple[Policy, list[float] | None]:
        """The intervention rule, sampling and sweep of a validated pedagogical request, within the
        vocabulary and VROLLOUT_MAX_PEDAGOGICAL_COST (a job's options are checked here too)."""
        refuse_across(self.pair, "a pedagogical rollout (teacher tokens substituted into the student's)")
        if request.max_rank is not None and request.max_rank > self.pair.vocab_size:
            raise BadTrajectory(
                f"max_rank must be at most {self.pair.vocab_size} (the vocabulary), got {request.max_rank}",
                field="max_rank",
            )
        gen = request.generation or GenerationOptions()
        policy = Policy(
            threshold=request.threshold,
            max_rank=request.max_rank,
            temperature=gen.temperature,
            top_p=gen.top_p,
            max_new_tokens=_given(
                gen.max_new_tokens, min(PEDAGOGICAL_MAX_NEW_TOKENS, self.settings.max_new_tokens)
            ),
            seed=gen.seed,
        )
        sweep = sorted(request.sweep) if request.sweep else None
        rollouts = 1 + len(sweep or [])
        check_budget(
            policy.max_new_tokens * rollouts,
            self.settings.max_pedagogical_cost,
            "VROLLOUT_MAX_PEDAGOGICAL_COST",
            f"max_new_tokens {policy.max_new_tokens} x {rollouts} rollouts",
        )
        return policy, sweep

    def pedagogical(self, prep: PreparedRollout, progress: Progress = _no_progress) -> dict[str, Any]:
        """One pedagogical rollout (and the threshold sweep, if asked for)."""
        rollout = partial(self.backend.pedagogical_rollout, prep.student_ids, prep.teacher_ids)
        with out_of_memory("this request"):
            result = rollout(prep.policy, prep.reference, progress)
            sweep = None
            if prep.sweep:
                # Each step of a sweep's rollouts repeats the sweep's last report: a step boundary
                # where a cancelled request stops (see jobs/worker.py), without a stage of its own.
                last = ("sweep", 0, len(prep.sweep))

                def sweep_progress(stage: str, done: int, total: int) -> None:
                    nonlocal last
                    last = (stage, done, total)
                    progress(stage, done, total)

                sweep = threshold_sweep(
                    lambda policy: rollout(policy, prep.reference, lambda *_: progress(*last)),
                    prep.policy,
                    prep.sweep,
                    sweep_progress,
                )
        progress("done", 1, 1)
        return self._rollout_result(prep, result, sweep)

    def pedagogical_batch(
        self, preps: list[PreparedRollout], progress: Progress = _no_progress
    ) -> list[dict[str, Any] | VRError]:
        """`pedagogical(prep)` for each, in order: where the backend decodes several rollouts
        together (`pedagogical_rollouts`: local models), the rollouts and their sweep points
        decode VROLLOUT_PEDAGOGICAL_BATCH at a time; each result equals its own
        `pedagogical(prep)` (same seeds, same tokens, log-probs within float tolerance; only `id`
        and `created_at` differ). Elsewhere (vLLM) one by one. A batch that fails (e.g. out of
        memory) is retried one by one, so each prep gets its result or its own error.
        `progress`: at every decoding step (a cancel raises there)."""
        batched = getattr(self.backend, "pedagogical_rollouts", None)
        if batched is None:
            return self._one_by_one(preps, progress)
        runs = [
            (p.student_ids, p.teacher_ids, policy, p.reference)
            for p in preps
            for policy in [p.policy] + [Policy(**{**vars(p.policy), "threshold": t}) for t in p.sweep or []]
        ]
        size = self.settings.pedagogical_batch
        try:
            with out_of_memory("a batch of pedagogical rollouts"):
                done = [r for i in range(0, len(runs), size) for r in batched(runs[i : i + size], progress)]
        except VRError:
            return self._one_by_one(preps, progress)
        results: list[dict[str, Any] | VRError] = []
        it = iter(done)
        for prep in preps:
            result = next(it)
            sweep = None
            if prep.sweep:  # the sweep's runs follow in threshold order, as `threshold_sweep` asks
                sweep = threshold_sweep(lambda policy: next(it), prep.policy, prep.sweep)
            results.append(self._rollout_result(prep, result, sweep))
        progress("done", 1, 1)
        return results

    def _one_by_one(self, preps: list[PreparedRollout], progress: Progress) -> list[dict[str, Any] | VRError]:
        results: list[dict[str, Any] | VRError] = []
        for prep in preps:
            try:
                results.append(self.pedagogical(prep, progress))
            except VRError as exc:
                results.append(exc)
        return results

    def _rollout_result(
        self, prep: PreparedRollout, result: dict[str, Any], sweep: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        """A pedagogical request's answer: its contexts, the rollout, the sweep."""
        tok = self.pair.student.tokenizer
        return {
            "id": new_id(),
            "created_at": now(),
            "analysis_id": prep.analysis_id,
            "student": {"model": self.pair.student.name, "context_ids": prep.student_ids,
                        "context_text": tok.decode(prep.student_ids)},
            "teacher": {"model": self.pair.teacher.name, "context_ids": prep.teacher_ids,
                        "context_text": tok.decode(prep.teacher_ids)},
            **result,
            "sweep": sweep,
        }  # fmt: skip

    def analyze(self, obj: Any, progress: Progress = _no_progress) -> dict[str, Any]:
        """One trajectory (any format of docs/formats.md, plus options) to one stored analysis."""
        return self.run(self.prepare(obj), progress)
