"""`vrollout`: serve the app, or analyse a file of trajectories without a server."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path
from typing import Any

import vrollout.cli.flags as flags
from pydantic import ValidationError
from vrollout.config import Settings
from vrollout.errors import VRError


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment (VROLLOUT_*), overridden by the flags that were given."""
    overrides = flags.overrides(args)
    if overrides.get("teacher_urls"):
        overrides.setdefault("backend", "vllm")
    return Settings(**overrides)


def _model_flags(p: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """The settings' flags (vrollout.cli.flags), made from Settings: by default those of the file
    commands, every setting but the server's own. Added after a command's own options, which keep
    their meaning where a name is shared (`--teacher-template`: the file's lines' template)."""
    if names is None:
        names = tuple(n for n in Settings.model_fields if n not in flags.SERVER_ONLY)
    flags.add_settings_flags(p, names)


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
    analyzer = Analyzer.from_settings(settings)  # models that do not load: the same
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
    from vrollout.pipeline.digest import digest, summary_row
    from vrollout.report.dataset import step_rows, steps_parquet

    (folder / "steps.parquet").write_bytes(steps_parquet(step_rows(analyses)))
    digests = [digest(a) for a in analyses]  # what the figures and the headline table read
    rows = [summary_row(a) for a in analyses]
    write_views(folder, name, lambda: digests, rows, errors, analyzer, settings)


def build_parser() -> argparse.ArgumentParser:
    """The `vrollout` command's parser: its subcommands, their own options and the settings' flags."""
    parser = argparse.ArgumentParser(prog="vrollout", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start the web app and JSON API")
    _model_flags(p, tuple(Settings.model_fields))  # every setting, the server's own included
    p.set_defaults(fn=serve)

    p = sub.add_parser("analyze", help="analyse a JSONL file of trajectories")
    p.add_argument(
        "file",
        nargs="+",
        help="JSONL (one trajectory per line), a JSON array, Parquet, a folder written by datasets' "
        "save_to_disk, hf://datasets/ORG/NAME, or a folder or glob of such files, or several "
        "(docs/formats.md)",
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
    p.add_argument(
        "--objectives",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help="distillation objectives per step, comma-separated (default: all; docs/objectives.md)",
    )
    p.add_argument(
        "--objective-k", dest="objective_k", type=int, help="top-k of the top-k objectives (default 20)"
    )
    p.add_argument("--jsd-beta", dest="jsd_beta", type=float, help="β of TRL's generalised JSD (default 0.5)")
    p.add_argument(
        "--clip-tau", dest="clip_tau", type=float, help="clip of the clipped objectives (default 0.05)"
    )
    p.add_argument("--no-store", action="store_true", help="do not save to the database")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep what --out holds from an earlier (killed or interrupted) run and skip its lines",
    )
    p.add_argument("--shard", help="I/N: only lines whose number is I modulo N, counting from 0 (N machines)")
    from vrollout.cli.analyze import add_cluster_flags

    add_cluster_flags(p)
    _model_flags(p)
    p.set_defaults(fn=analyze)

    from vrollout.cli.localize import add_parser as add_localize
    from vrollout.cli.pedagogical import add_parser as add_pedagogical

    # Their parsers take the settings' flags last, once their own options are in (see _model_flags).
    add_localize(sub, lambda _: None).set_defaults(fn=localize)
    add_pedagogical(sub, lambda _: None, _context_flags).set_defaults(fn=pedagogical)
    for name in ("localize", "pedagogical"):
        _model_flags(sub.choices[name])
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except VRError as exc:  # e.g. a damaged database: the message says which file and what to do
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a flag's or VROLLOUT_* variable's value the settings refuse
        if exc.title != Settings.__name__:
            raise
        print(f"error: {settings_error(exc, args)}", file=sys.stderr)
        return 2


def settings_error(exc: ValidationError, args: argparse.Namespace) -> str:
    """The settings' refusal in one line, each value named as it was given: its flag when the
    command line set it, else its environment variable."""
    given = flags.overrides(args)
    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        where = flags.flag_name(name) if name in given else f"VROLLOUT_{name.upper()}"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
