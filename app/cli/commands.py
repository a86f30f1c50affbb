"""`vrollout`: serve the app, or analyse a file of trajectories without a server."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from vrollout.config import Settings
from vrollout.errors import VRError


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment (VROLLOUT_*), overridden by the flags that were given."""
    names = ("student", "teacher", "device", "dtype", "database", "cache_dir", "host", "port", "api_token")
    names += ("allowed_hosts",)
    overrides: dict[str, Any] = {n: getattr(args, n) for n in names if getattr(args, n, None)}
    if getattr(args, "trust_remote_code", False):
        overrides["trust_remote_code"] = True
    if getattr(args, "no_noise_floor", False):
        overrides["noise_floor"] = False
    for name in RENDERING:  # how each context is rendered (docs/formats.md "Teacher context")
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    for name in PLACEMENT:  # models split across devices (docs/api.md "Large teachers")
        if getattr(args, name, None):
            overrides[name] = getattr(args, name)
    for name in ("backend", "teacher_urls", "student_urls", "tokenizer", "vllm_logprobs", "vllm_concurrency"):
        if getattr(args, name, None):  # the vllm backend (README "Running on vLLM")
            overrides[name] = getattr(args, name)
    if overrides.get("teacher_urls"):
        overrides.setdefault("backend", "vllm")
    return Settings(**overrides)


PLACEMENT = (
    "teacher_device_map",
    "teacher_max_memory",
    "student_device_map",
    "student_max_memory",
    "offload_folder",
)


RENDERING = ("student_chat_template_kwargs", "teacher_chat_template_kwargs", "teacher_prompt_format")


def _json_object(text: str) -> dict[str, Any]:
    """A flag's JSON object, e.g. '{"enable_thinking": false}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a JSON object is needed, e.g. '{\"enable_thinking\": false}'")
    return value


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student", help="HF id or local folder (default: embedded SmolLM2-135M)")
    p.add_argument(
        "--teacher",
        help="HF id, folder or .gguf file; another tokenizer is aligned by spans of text "
        "(default: the student's own weights)",
    )
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--database", type=Path, help="SQLite file for stored analyses")
    p.add_argument("--cache-dir", dest="cache_dir", type=Path, help="converted-model cache")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from repos")
    p.add_argument(
        "--no-noise-floor",
        dest="no_noise_floor",
        action="store_true",
        help="skip the preflight's noise floor (one more replay per analysis with privileged info)",
    )
    for role in ("student", "teacher"):
        p.add_argument(
            f"--{role}-chat-template-kwargs",
            dest=f"{role}_chat_template_kwargs",
            type=_json_object,
            help=f"the {role}'s chat template arguments, a JSON object, "
            """e.g. '{"enable_thinking": false}'""",
        )
    p.add_argument(
        "--teacher-prompt-format",
        dest="teacher_prompt_format",
        help="a teacher without a chat template (a base model): its prompt, with {prompt}, "
        "e.g. 'Question: {prompt}\\nAnswer:'",
    )
    for role in ("teacher", "student"):
        p.add_argument(
            f"--{role}-device-map",
            dest=f"{role}_device_map",
            help=f"split the {role} across devices: auto | balanced | sequential | JSON module -> device",
        )
        p.add_argument(
            f"--{role}-max-memory",
            dest=f"{role}_max_memory",
            help=f'the {role}\'s memory per device, JSON like {{"0": "20GiB", "cpu": "60GiB"}}',
        )
    p.add_argument(
        "--offload-folder", dest="offload_folder", type=Path, help="weights a device map puts on disk"
    )
    p.add_argument("--backend", choices=("local", "vllm"), help="run the models here or on vLLM servers")
    p.add_argument("--teacher-url", dest="teacher_urls", action="append", help="a vLLM teacher (repeatable)")
    p.add_argument("--student-url", dest="student_urls", action="append", help="a vLLM student (repeatable)")
    p.add_argument("--tokenizer", help="vllm: the served model's tokenizer folder (default: --student's)")
    p.add_argument("--vllm-logprobs", dest="vllm_logprobs", type=int, help="vllm: top-K log-probs (K)")
    p.add_argument("--vllm-concurrency", dest="vllm_concurrency", type=int, help="vllm: requests per replica")


def _context_flags(p: argparse.ArgumentParser) -> None:
    """What the teacher is given, for a file's lines that set none (`analyze`, `pedagogical`)."""
    p.add_argument(
        "--teacher-context",
        dest="teacher_context",
        choices=("privileged", "sibling", "feedback"),
        help="what the teacher is given, for lines that set none: privileged (default), sibling (a "
        "successful response to the same prompt from the file) or feedback (the line's feedback)",
    )
    p.add_argument(
        "--teacher-template",
        dest="teacher_template",
        help="the teacher template for lines that set none: {prompt} and {privileged} (or {feedback})",
    )


def exposure_warning(settings: Settings) -> str | None:
    """What `serve` warns about before it starts: reachable from elsewhere, with no token."""
    try:
        loopback = settings.host == "localhost" or ipaddress.ip_address(settings.host).is_loopback
    except ValueError:  # a host name
        loopback = False
    if loopback or settings.api_token:
        return None
    return (
        f"warning: serving on {settings.host} without an API token: anyone who can reach it can run "
        "the models and read every stored analysis. Set one, e.g. "
        "VROLLOUT_API_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
    )


def serve(args: argparse.Namespace) -> int:
    import uvicorn
    from vrollout.pipeline.analyzer import Analyzer
    from vrollout.storage.store import Store
    from vrollout.web.app import create_app
    from vrollout.web.server import uvicorn_options

    settings = _settings(args)
    if warning := exposure_warning(settings):
        print(warning, file=sys.stderr)
    Store(settings.database)  # a damaged database: a clear message now, not a traceback at start-up
    analyzer = Analyzer.from_settings(settings, store=False)  # models that do not load: the same
    uvicorn.run(create_app(settings, analyzer=analyzer), **uvicorn_options(settings))  # web/server.py
    return 0


def analyze(args: argparse.Namespace) -> int:
    """`vrollout analyze`: streamed, in bounded memory, resumable and shardable (vrollout.cli.analyze)."""
    from vrollout.cli.analyze import analyze_file

    return analyze_file(args, _settings(args))


def localize(args: argparse.Namespace) -> int:
    """`vrollout localize FILE --out DIR` (vrollout.cli.localize)."""
    from vrollout.cli.localize import localize_file

    return localize_file(args, _settings(args))


def pedagogical(args: argparse.Namespace) -> int:
    """`vrollout pedagogical FILE --out DIR` (vrollout.cli.pedagogical)."""
    from vrollout.cli.pedagogical import pedagogical_file

    return pedagogical_file(args, _settings(args))


def write_dataset(
    folder: Path, name: str, analyses: list[dict[str, Any]], errors: list[tuple[int, str]], analyzer: Any,
    settings: Settings,
) -> None:  # fmt: skip
    """The exports of the dataset page, and a self-contained HTML report that opens offline, from
    analyses held in memory (the streaming CLI writes the same views as it goes)."""
    from vrollout.cli.analyze import write_views
    from vrollout.report.dataset import digest, step_rows, steps_parquet, summary_row

    (folder / "steps.parquet").write_bytes(steps_parquet(step_rows(analyses)))
    digests = [digest(a) for a in analyses]  # what the figures and the headline table read
    rows = [summary_row(a) for a in analyses]
    write_views(folder, name, lambda: digests, rows, errors, analyzer, settings)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="vrollout", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start the web app and JSON API")
    _model_flags(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument(
        "--api-token",
        dest="api_token",
        help="ask every request for this token (prefer VROLLOUT_API_TOKEN: flags show in `ps`)",
    )
    p.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        help="a further Host name to answer to without a token (repeatable; VROLLOUT_ALLOWED_HOSTS)",
    )
    p.set_defaults(fn=serve)

    p = sub.add_parser("analyze", help="analyse a JSONL file of trajectories")
    _model_flags(p)
    p.add_argument(
        "file",
        help="JSONL (one trajectory per line), a JSON array, Parquet, a folder written by datasets' "
        "save_to_disk, or hf://datasets/ORG/NAME (docs/formats.md)",
    )
    p.add_argument("--split", help="the split of a datasets folder or an hf:// dataset (e.g. train)")
    p.add_argument(
        "--map",
        help="where the fields are: field=column,... e.g. prompt=question,privileged=solution "
        "(a dotted column reads a nested value)",
    )
    p.add_argument(
        "--from",
        dest="preset",
        help="a training framework's log: verl | trl | tinker | auto (detected from the columns)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="FILE.jsonl: one analysis per line; or a folder: analyses.jsonl, summaries.csv/.jsonl, "
        "steps.parquet, figures.json, headline.csv/.md/.tex and report.html (opens offline)",
    )
    p.add_argument("--privileged", help="privileged text for lines that carry none")
    _context_flags(p)
    p.add_argument("--top-k", dest="top_k", type=int, help="default 5")
    p.add_argument("--continuation-tokens", dest="continuation_tokens", type=int, default=0)
    p.add_argument("--recovery", action="store_true", help="recovery curve (lines need reference_answer)")
    p.add_argument("--recovery-max-new-tokens", dest="recovery_max_new_tokens", type=int, default=64)
    p.add_argument("--no-store", action="store_true", help="do not save to the database")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep what --out holds from an earlier (killed or interrupted) run and skip its lines",
    )
    p.add_argument("--shard", help="I/N: only lines whose number is I modulo N, counting from 0 (N machines)")
    p.set_defaults(fn=analyze)

    from vrollout.cli.localize import add_parser as add_localize

    add_localize(sub, _model_flags).set_defaults(fn=localize)

    from vrollout.cli.pedagogical import add_parser as add_pedagogical

    add_pedagogical(sub, _model_flags, _context_flags).set_defaults(fn=pedagogical)

    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except VRError as exc:  # e.g. a damaged database: the message says which file and what to do
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a flag's or VROLLOUT_* variable's value the settings refuse
        if exc.title != Settings.__name__:
            raise
        print(f"error: {settings_error(exc, args, sub.choices[args.command])}", file=sys.stderr)
        return 2


def settings_error(exc: ValidationError, args: argparse.Namespace, command: argparse.ArgumentParser) -> str:
    """The settings' refusal in one line, each value named as it was given: its flag when the
    command line set it, else its environment variable."""
    flags = {action.dest: action.option_strings[0] for action in command._actions if action.option_strings}
    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        given = name in flags and getattr(args, name, None) not in (None, False)
        where = flags[name] if given else f"VROLLOUT_{name.upper()}"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
