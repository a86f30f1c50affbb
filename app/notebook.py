"""The Python API for notebooks and scripts: `vrollout.load()` gives a `VirtualRollout`, whose
`analyze` returns an `Analysis` (the JSON of `POST /api/analyze`, plus a table, the page's figure
and an inline view).

Nothing is written to disk: the analyzer runs without a database. Importing this module is cheap
(no torch); `load` imports the model code when it is called. Knows nothing about HTTP.
"""

from __future__ import annotations

import difflib
import html
import json
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from vrollout.metrics.signal import headline

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go
    from vrollout.pipeline.analyzer import Analyzer

STRIP_TOKENS = 2000  # the inline view shows this many tokens; a notebook chokes on megabytes of HTML


@dataclass(frozen=True)
class Rollout:
    """The virtual rollout: the teacher's top-1 token at every prefix, and their decoded text."""

    token_ids: list[int]
    text: str


class Analysis:
    """One analysis: the dict that `POST /api/analyze` returns, with notebook views of it.

    `Analysis(json_dict)` also wraps an analysis fetched from a server (`GET /api/analyses/{id}`)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        from pydantic_core import to_json

        # Normalised exactly as the API serialises it (non-finite numbers become null).
        self._json = to_json(dict(data), inf_nan_mode="null")
        self._data: dict[str, Any] = json.loads(self._json)

    @property
    def id(self) -> str:
        return self._data["id"]

    @property
    def summary(self) -> dict[str, Any]:
        return self._data["summary"]

    @property
    def steps(self) -> list[dict[str, Any]]:
        return self._data["steps"]

    @property
    def preflight(self) -> dict[str, Any] | None:
        """The context diff, noise floor and leak score (docs/metrics.md, "Preflight"); None in
        an analysis stored before it existed."""
        return self._data.get("preflight")

    @property
    def virtual_rollout(self) -> Rollout:
        rollout = self._data["virtual_rollout"]
        return Rollout(list(rollout["token_ids"]), rollout["text"])

    @property
    def response_text(self) -> str:
        return self._data["response_text"]

    def __getitem__(self, key: str) -> Any:
        """Any field of the JSON, e.g. `a["teacher"]["context_text"]`."""
        return self._data[key]

    def to_dict(self) -> dict[str, Any]:
        """Exactly the JSON of `POST /api/analyze` (a fresh copy)."""
        return json.loads(self._json)

    def to_pandas(self) -> pd.DataFrame:
        """One row per step, the step fields (docs: the JSON API) as columns."""
        import pandas as pd

        if self.steps:
            columns = list(self.steps[0])
        else:
            from vrollout.schema.analysis import Step

            columns = list(Step.__annotations__)
        return pd.DataFrame(self.steps, columns=columns)

    def figure(self) -> go.Figure:
        """The analysis page's Plotly figure (the one `GET /api/analyses/{id}/figure` sends)."""
        from vrollout.report.figures import analysis_figure

        return analysis_figure(self._data)

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"Analysis(id={self.id!r}, tokens={s['tokens']}, agreement_rate={s['agreement_rate']}, "
            f"divergences={s['divergences']}, reverse_kl_total={s['reverse_kl_total']})"
        )

    def _repr_html_(self) -> str:
        """The token strip and the summary, self-contained: inline CSS, no script, nothing fetched,
        every model-written string escaped."""
        return render_html(self._data)


def _visible(token: str) -> str:
    """Whitespace made visible, as the pages' token strip shows it."""
    return token.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍") or "∅"


def _number(value: float | None, fmt: str, unit: str = "") -> str:
    return "–" if value is None else f"{value:{fmt}}{unit}"


CSS = """
.vr-nb{font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2933;background:#fff;
  padding:8px 10px;border:1px solid #e4e7eb;border-radius:6px}
.vr-nb .vr-head{color:#52606d;margin:0 0 4px}
.vr-nb table.vr-sum{border-collapse:collapse;margin:0 0 8px}
.vr-nb table.vr-sum td{padding:1px 14px 1px 0;border:0;text-align:left;background:none}
.vr-nb table.vr-sum td:first-child{color:#7b8794}
.vr-nb .vr-strip{display:flex;flex-wrap:wrap;gap:2px 0;font:12px/1.25 ui-monospace,Menlo,monospace}
.vr-nb .vr-col{display:inline-flex;flex-direction:column}
.vr-nb .vr-col>span{white-space:pre;padding:1px;min-width:.6em}
.vr-nb .vr-tea{color:#b3bac2;font-size:11px;border-top:1px solid #eef0f3}
.vr-nb .vr-div .vr-tea{color:#7a3a00;background:#fde3c8;font-weight:600}
.vr-nb .vr-texts{display:grid;grid-template-columns:1fr 1fr;gap:10px;margin-top:8px}
.vr-nb pre{white-space:pre-wrap;margin:2px 0 0;padding:6px;background:#f5f7fa;font-size:12px}
.vr-nb .vr-note{color:#7b8794;font-size:12px}
.vr-nb .vr-headline{font-weight:600;font-size:14px;margin:0 0 4px}
"""


def _summary_rows(a: dict[str, Any]) -> list[tuple[str, str]]:
    s = a["summary"]
    approx = "≈ " if a.get("estimated") else ""  # KL from a server's top-K log-probs
    first = s["first_divergence"]
    rate = s["agreement_rate"]
    return [
        ("tokens", str(s["tokens"])),
        ("agreement", _number(None if rate is None else 100 * rate, ".1f", "%")),
        ("divergences", str(s["divergences"])),
        ("first divergence", "none" if first is None else f"#{first}"),
        ("reverse KL total", approx + _number(s["reverse_kl_total"], ".3f", " nats")),
        ("reverse KL mean", approx + _number(s["reverse_kl_mean"], ".4f", " nats")),
        ("advantage total", _number(s["advantage_total"], ".3f")),
    ]


def _strip(steps: list[dict[str, Any]]) -> str:
    """Student tokens over the teacher's top-1, shaded by reverse KL; the hover title says more."""
    peak = max((s["reverse_kl"] or 0.0 for s in steps), default=0.0)
    cols = []
    for s in steps:
        alpha = 0.55 * (s["reverse_kl"] or 0.0) / peak if peak > 0 else 0.0
        shade = f' style="background:rgba(192,57,43,{alpha:.2f})"' if alpha >= 0.02 else ""
        title = (
            f"#{s['position']} {_visible(s['token'])!r} → teacher {_visible(s['teacher_top1'])!r} · "
            f"reverse KL {_number(s['reverse_kl'], '.3f')} · rank {s['teacher_rank']}"
        )
        cols.append(
            # a conversation's context step (agree null) is no divergence
            f'<span class="vr-col{" vr-div" if s["agree"] is False else ""}" title="{html.escape(title)}">'
            f'<span class="vr-stu"{shade}>{html.escape(_visible(s["token"]))}</span>'
            f'<span class="vr-tea">{html.escape(_visible(s["teacher_top1"]))}</span></span>'
        )
    return "".join(cols)


def _headline(a: dict[str, Any]) -> str:
    """The analysis page's headline (metrics/signal.py), and what to ask for to complete it."""
    text, missing = headline(a["summary"])
    hints = "".join(f'<p class="vr-note">{html.escape(m)}</p>' for m in missing)
    return f'<p class="vr-headline">{html.escape(text)}</p>{hints}'


def render_html(a: dict[str, Any]) -> str:
    """An analysis as one self-contained HTML fragment (the notebook's inline view)."""
    e = html.escape
    teacher = a["teacher"]["model"] + (" (same weights)" if a["teacher"].get("shared_weights") else "")
    rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in _summary_rows(a))
    steps = a["steps"]
    more = ""
    if len(steps) > STRIP_TOKENS:
        more = (
            f'<p class="vr-note">the first {STRIP_TOKENS} of {len(steps)} tokens; '
            "<code>to_pandas()</code> has every step</p>"
        )
    return (
        f'<div class="vr-nb"><style>{CSS}</style>'
        f'<p class="vr-head">Analysis <code>{e(a["id"])}</code> · student {e(a["student"]["model"])} · '
        f"teacher {e(teacher)}</p>"
        f"{_headline(a)}"
        f'<table class="vr-sum">{rows}</table>'
        "<p class=\"vr-note\">top: the student's token · below: the teacher's top-1 at that prefix "
        "(highlighted where they differ); shade: reverse KL</p>"
        f'<div class="vr-strip">{_strip(steps[:STRIP_TOKENS])}</div>{more}'
        '<div class="vr-texts">'
        f"<div><b>Student response</b><pre>{e(a['response_text'])}</pre></div>"
        f"<div><b>Virtual rollout</b><pre>{e(a['virtual_rollout']['text'])}</pre></div>"
        "</div></div>"
    )


class VirtualRollout:
    """Loaded models, ready to analyse trajectories. `vrollout.load()` makes one; for models
    already in memory, `VirtualRollout(Analyzer(pair, settings))`."""

    def __init__(self, analyzer: Analyzer) -> None:
        self.analyzer = analyzer

    @property
    def models(self) -> dict[str, Any]:
        """Student and teacher: name, source, vocabulary, device, dtype (as `GET /api/models`)."""
        return self.analyzer.pair.describe()

    def __repr__(self) -> str:
        pair = self.analyzer.pair
        teacher = "same weights" if pair.shared else pair.teacher.name
        return f"VirtualRollout(student={pair.student.name!r}, teacher={teacher!r})"

    def analyze(self, trajectory: Mapping[str, Any] | None = None, /, **fields: Any) -> Analysis:
        """One trajectory in any format (a dict, or its fields as keywords), with the options of
        `POST /api/analyze` (`privileged`, `top_k`, `continuation_tokens`, `generation`, ...) as
        keywords; a keyword overrides the same key of the dict. No response: the student writes one."""
        obj: Any = fields
        if isinstance(trajectory, Mapping):
            obj = {**trajectory, **fields}
        elif trajectory is not None:
            obj = trajectory  # not an object: `prepare` rejects it with the API's message
        prepared = self.analyzer.prepare(obj)
        return Analysis(self.analyzer.run(prepared, store=False))

    def analyze_many(
        self,
        trajectories: Iterable[Mapping[str, Any] | str] | str | os.PathLike[str],
        *,
        privileged: str | None = None,
        progress: bool = True,
        errors: Literal["raise", "skip"] = "raise",
        mapping: str | Mapping[str, str] | None = None,
        preset: str | None = None,
        split: str | None = None,
        ray: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float | None = None,
        cpus_per_worker: float | None = None,
        batch_size: int | None = None,
        **options: Any,
    ) -> Iterator[Analysis]:
        """Analyses of many trajectories (dicts, or JSON lines such as an open .jsonl file), yielded
        in input order; or of a source by its path (JSONL, JSON, Parquet, a `save_to_disk` folder,
        `hf://datasets/ORG/NAME` with `split`), whose trajectories are numbered by line (row) from
        1. `mapping` (`{"prompt": "question"}` or `"prompt=question,..."`) and `preset` (`"verl"`,
        `"trl"`, `"tinker"`, `"auto"`) rename each trajectory's columns first. Short ones share
        padded batches, as jobs and `vrollout analyze` do. Keyword options and `privileged` apply
        to trajectories that do not set their own (e.g. `teacher_context="sibling"`,
        `teacher_template=...`: docs/formats.md "Teacher context"; with sibling the whole input is
        read first, an iterable into memory, to index its successful responses). A bad trajectory
        raises its error, naming its index; `errors="skip"` leaves it out with a warning.

        `ray` (`"local"`, `"auto"`, `"ray://HOST:PORT"`) runs the lines on a Ray cluster as
        `vrollout analyze --ray` does (docs/ray.md), with `workers`, `gpus_per_worker`,
        `cpus_per_worker` and `batch_size` as its flags; the analyses are the same, yielded in the
        same order. Each worker loads the models these settings name; a path is read by Ray Data's
        read tasks, trajectories given here are sent from this process."""
        from tqdm import tqdm
        from vrollout.inputs.sources import check_preset, iter_rows, map_rows, parse_mapping
        from vrollout.inputs.teacher_context import teacher_options
        from vrollout.pipeline.lines import file_lines, run_lines

        if errors not in ("raise", "skip"):
            raise ValueError(f'errors must be "raise" or "skip", got {errors!r}')
        sizes = {"workers": workers, "gpus_per_worker": gpus_per_worker}
        sizes |= {"cpus_per_worker": cpus_per_worker, "batch_size": batch_size}
        cluster = self._cluster(ray, sizes)
        total = None
        if isinstance(trajectories, os.PathLike) or (
            isinstance(trajectories, str) and not trajectories.lstrip().startswith(("{", "["))
        ):
            settings = self.analyzer.settings
            if cluster is not None:
                reading = {"split": split, "mapping": mapping, "preset": preset}
                on = self._on_cluster(
                    cluster, trajectories, None, privileged, progress, errors, reading, options
                )
                yield from on
                return
            rows = iter_rows(
                trajectories,
                name=str(trajectories),
                settings=settings,
                split=split,
                mapping=mapping,
                preset=preset,
            )
        else:
            if isinstance(trajectories, str | bytes | Mapping):
                raise TypeError(
                    "analyze_many takes a path, or an iterable of trajectories or JSON lines, e.g. open(path)"
                )
            total = len(trajectories) if hasattr(trajectories, "__len__") else None
            check_preset(preset)
            rows = map_rows(self._numbered(trajectories), parse_mapping(mapping), preset)
        teacher_options(options.get("teacher_context"), options.get("teacher_template"))
        if cluster is not None:
            yield from self._on_cluster(cluster, None, list(rows), privileged, progress, errors, {}, options)
            return
        siblings = None
        if options.get("teacher_context") == "sibling":  # the whole input first (inputs.teacher_context)
            listed = list(rows)
            siblings = self.analyzer.index_siblings(listed, options, privileged)
            rows = iter(listed)
        unknown: dict[str, list[int]] = {}  # keys kept in meta: line numbers
        prepare = file_lines(self.analyzer, options, privileged, unknown, siblings)
        with tqdm(total=total, unit="traj", disable=not progress, file=sys.stderr) as bar:
            lines = run_lines(rows, prepare, self.analyzer.run_prepared, progress=bar.update)
            yield from self._analyses(lines, unknown, errors)

    @staticmethod
    def _cluster(address: str | None, sizes: dict[str, Any]) -> Any:
        """The `ray=` arguments as a `cluster.ray.Cluster` (Ray checked now); None without `ray`."""
        if address is None:
            given = [name for name, value in sizes.items() if value is not None]
            if given:
                raise TypeError(f"{', '.join(given)} apply with ray= only")
            return None
        from vrollout.cluster.ray import cluster_of, require_ray

        require_ray()
        from types import SimpleNamespace

        return cluster_of(SimpleNamespace(ray=address, **sizes))

    def _on_cluster(
        self,
        cluster: Any,
        path: str | os.PathLike[str] | None,
        rows: list[tuple[int, Any]] | None,
        privileged: str | None,
        progress: bool,
        errors: str,
        reading: dict[str, Any],
        options: dict[str, Any],
    ) -> Iterator[Analysis]:
        """`analyze_many` on a Ray cluster: a path read by Ray Data, or numbered `rows` sent from here."""
        from tqdm import tqdm
        from vrollout.cluster.ray import Keep, SiblingPass, Task, cluster_lines, run_rows
        from vrollout.inputs.paths import Sources
        from vrollout.inputs.teacher_context import teacher_options

        teacher_options(options.get("teacher_context"), options.get("teacher_template"))  # checked first
        settings = self.analyzer.settings
        sibling = SiblingPass(options, privileged) if options.get("teacher_context") == "sibling" else None
        task = Task(notebook_lines, {"options": options, "privileged": privileged, "siblings": None})
        unknown: dict[str, list[int]] = {}
        with tqdm(
            total=None if rows is None else len(rows), unit="traj", disable=not progress, file=sys.stderr
        ) as bar:
            if rows is None:
                sources = Sources(os.fspath(path), settings, **reading)  # type: ignore[arg-type]
                lines = cluster_lines(sources, task, settings, cluster, keep=Keep(), unknown=unknown,
                                      progress=bar.update, siblings=sibling)  # fmt: skip
            else:
                lines = run_rows(
                    rows, task, settings, cluster, unknown=unknown, progress=bar.update, siblings=sibling
                )
            yield from self._analyses(lines, unknown, errors)

    def _analyses(
        self, lines: Iterable[tuple[int, Any]], unknown: dict[str, list[int]], errors: str
    ) -> Iterator[Analysis]:
        """Each line's analysis, in order; a bad line as `errors` says; keys that are not fields
        warned about once each, as the lines bring them (`unknown` fills as they are read)."""
        from vrollout.errors import VRError

        warned: set[str] = set()
        for index, result in lines:
            if len(unknown) > len(warned):
                self._warn_keys({k: v for k, v in unknown.items() if k not in warned})
                warned.update(unknown)
            if isinstance(result, VRError):
                self._failed(index, result, errors)
            else:
                yield Analysis(result)

    @staticmethod
    def _warn_keys(unknown: dict[str, list[int]]) -> None:
        """Keys that are not fields, kept in `meta`, as the CLI words them (a near miss of a field
        is the line's error instead)."""
        from vrollout.pipeline.lines import key_warnings

        for warning in key_warnings(unknown):
            warnings.warn(f"trajectory {warning['lines'][0]}: {warning['warning']}", stacklevel=3)

    def _numbered(self, trajectories: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        for index, item in enumerate(trajectories):
            if isinstance(item, str | bytes):
                if not item.strip():
                    continue  # a blank line of a JSONL file
                item = self._json_line(index, item)
            yield index, item

    @staticmethod
    def _json_line(index: int, line: str | bytes) -> Any:
        from vrollout.errors import BadTrajectory

        try:
            return json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadTrajectory(f"trajectory {index}: not valid JSON ({exc.msg})") from exc

    @staticmethod
    def _failed(index: int, exc: Exception, errors: str) -> None:
        from vrollout.errors import VRError

        assert isinstance(exc, VRError)
        if errors == "raise":
            raise type(exc)(f"trajectory {index}: {exc.message}", **exc.details) from exc
        warnings.warn(f"trajectory {index} skipped: {exc.message}", stacklevel=3)


def notebook_lines(
    analyzer: Analyzer, rows: list[tuple[int, Any]], unknown: dict[str, list[int]], params: dict[str, Any]
) -> Iterator[tuple[int, Any]]:
    """What a cluster worker runs for `analyze_many(..., ray=...)` (`cluster.ray.Task`): the
    pipeline `analyze_many` runs here, over its batch of lines."""
    from vrollout.pipeline.lines import file_lines, run_lines

    prepare = file_lines(analyzer, params["options"], params["privileged"], unknown, params["siblings"])
    return run_lines(rows, prepare, analyzer.run_prepared)


def load(
    student: str | None = None,
    teacher: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    backend: str | None = None,
    **settings: Any,
) -> VirtualRollout:
    """Load the models once: the embedded default (SmolLM2-135M-Instruct as student and
    self-teacher) unless `student`/`teacher` name a Hugging Face id or a local folder. Any other
    setting (`cache_dir`, `teacher_template`, `max_response_tokens`, `teacher_urls`, ...) may be
    given as a keyword; the rest come from VROLLOUT_* variables. Nothing is stored."""
    from vrollout.config import Settings

    unknown = sorted(set(settings) - set(Settings.model_fields))
    if unknown:  # Settings ignores unknown names (environment variables): a keyword must not be
        close = {n: difflib.get_close_matches(n, Settings.model_fields, 1) for n in unknown}
        hints = "; ".join(f"{n!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for n, c in close.items())
        raise TypeError(f"load() got unknown settings: {hints}")
    from vrollout.pipeline.analyzer import Analyzer

    given = {"student": student, "teacher": teacher, "device": device, "dtype": dtype, "backend": backend}
    overrides = {k: v for k, v in given.items() if v is not None} | settings
    return VirtualRollout(Analyzer.from_settings(Settings(**overrides)))
