"""`vrollout analyze` streamed (vrollout.cli.analyze): the same results as the in-memory views,
`--resume` after a killed run, `--shard I/N`, Ctrl-C, and the per-line limits only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq
import pytest
from support import tiny_settings
from vrollout.cli.analyze import parse_shard
from vrollout.cli.commands import main, write_dataset
from vrollout.config import Settings
from vrollout.inputs.sources import iter_rows
from vrollout.inputs.trajectories import LineError
from vrollout.pipeline.analyzer import Analyzer

VIEWS = (
    "summaries.csv", "summaries.jsonl", "objectives.csv", "figures.json",
    "headline.csv", "headline.md", "headline.tex",
)  # fmt: skip


@pytest.fixture(scope="module")
def model(tiny_folder) -> Path:
    return tiny_folder


def trajectories(count: int, references: bool = False) -> list[dict]:
    lines = []
    for i in range(count):
        line = {"id": f"t{i}", "prompt": f"What is {i}+{i}?", "response": f"It is {2 * i + i % 3}."}
        if references and i % 2:
            line["reference_answer"] = str(2 * i)
        lines.append(line)
    return lines


def write(path: Path, lines: list, extra: str = "") -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + extra)
    return path


def analyze(model: Path, *args: str) -> list[str]:
    return ["analyze", *args, "--student", str(model), "--device", "cpu", "--dtype", "float32", "--no-store"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_streamed_views_equal_the_in_memory_ones(model, tiny, tmp_path, capsys):
    lines = trajectories(9, references=True)
    src = write(
        tmp_path / "runs.jsonl",
        lines,
        "{bad\n\n" + json.dumps({"prompt_ids": [1, 2], "response_ids": [5, 10**7]}) + "\n",
    )
    out = tmp_path / "streamed"
    assert main(analyze(model, str(src), "--out", str(out))) == 1
    err = capsys.readouterr().err
    assert f"{src}:10: invalid JSON" in err and "9 analysed, 2 failed" in err
    analyses = read_jsonl(out / "analyses.jsonl")
    assert [a["job"]["line"] for a in analyses] == list(range(1, 10))
    errors = [
        (10, "invalid JSON"),
        (12, "outside the vocabulary"),
    ]  # what the report lists: not compared here
    # The non-streaming result: every analysis in memory, the views made at once (cli.write_dataset).
    whole = tmp_path / "whole"
    whole.mkdir()
    pair = SimpleNamespace(
        student=SimpleNamespace(name="tiny-model"), teacher=SimpleNamespace(name="tiny-model")
    )
    write_dataset(whole, src.name, analyses, errors, SimpleNamespace(pair=pair), tiny_settings(tmp_path))
    for name in VIEWS:
        assert (out / name).read_text() == (whole / name).read_text(), name
    streamed, held = pd.read_parquet(out / "steps.parquet"), pd.read_parquet(whole / "steps.parquet")
    pd.testing.assert_frame_equal(streamed, held)
    assert len(streamed) == sum(a["summary"]["tokens"] for a in analyses)
    html = (out / "report.html").read_text()
    assert "9 trajectories analysed" in html and "line 10: invalid JSON" in html
    assert {p.name for p in out.iterdir()} == {"analyses.jsonl", "steps.parquet", "report.html", *VIEWS}
    # The analyses themselves: the numbers of one line analysed on its own.
    alone = Analyzer(tiny, tiny_settings(tmp_path))  # no store
    for line, analysis in zip(lines[:3], analyses, strict=False):
        expected = alone.analyze(line)
        assert [s["token_id"] for s in analysis["steps"]] == [s["token_id"] for s in expected["steps"]]
        got = [s["reverse_kl"] for s in analysis["steps"]]
        assert got == pytest.approx([s["reverse_kl"] for s in expected["steps"]], abs=1e-4)


def spawn(model: Path, src: Path, out: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    argv = [sys.executable, "-m", "vrollout.cli", *analyze(model, str(src), "--out", str(out), *flags)]
    return subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_a_terminal,
    )


def ctrl_c_as_a_terminal() -> None:
    """Ctrl-C reaches the run as it does from a terminal. A pytest-xdist worker ignores SIGINT, and an
    ignored signal stays ignored across exec: Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_lines(proc: subprocess.Popen, path: Path, count: int, timeout: float = 240) -> None:
    """Until `path` holds `count` whole lines (the first window), while the run goes on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            assert proc.poll() is None, "the run ended before it could be stopped: give it more lines"
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no {count} lines in {path} after {timeout} s")


def test_resume_after_a_killed_run(model, tmp_path, capsys):
    lines = trajectories(256)
    src = write(tmp_path / "runs.jsonl", lines)
    out = tmp_path / "out"
    proc = spawn(model, src, out)
    wait_for_lines(proc, out / "analyses.jsonl", 64)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = read_jsonl(out / "analyses.jsonl")
    assert 64 <= len(first) < 256
    with (out / "analyses.jsonl").open("a") as f:
        f.write('{"id": "torn", "job": {"line": 399')  # as if killed in the middle of a line
    assert main(analyze(model, str(src), "--out", str(out), "--resume")) == 0
    err = capsys.readouterr().err
    assert f"resuming: {len(first)} lines already in" in err
    assert f"{256 - len(first)} analysed, 0 failed ({len(first)} from the earlier run)" in err
    analyses = read_jsonl(out / "analyses.jsonl")
    numbers = sorted(a["job"]["line"] for a in analyses)
    assert numbers == list(range(1, 257))  # every line exactly once
    assert analyses[: len(first)] == first  # the earlier run's lines kept as they were
    summaries = pd.read_csv(out / "summaries.csv")
    steps = pq.read_table(out / "steps.parquet").to_pandas()
    assert sorted(summaries["line"]) == numbers and len(steps) == summaries["tokens"].sum()
    assert steps.groupby("line").size().to_dict() == {
        a["job"]["line"]: a["summary"]["tokens"] for a in analyses
    }
    # Equal numbers: an uninterrupted run gives the same per-line results.
    whole = tmp_path / "whole.jsonl"
    assert main(analyze(model, str(src), "--out", str(whole))) == 0
    expected = {a["job"]["line"]: a for a in read_jsonl(whole)}
    for a in analyses:
        b = expected[a["job"]["line"]]
        assert a["trajectory"] == b["trajectory"] and a["summary"]["tokens"] == b["summary"]["tokens"]
        assert a["summary"]["reverse_kl_total"] == pytest.approx(b["summary"]["reverse_kl_total"], abs=1e-4)


def test_a_line_that_failed_and_succeeds_on_resume_is_put_back_in_order(model, tmp_path, capsys):
    lines = trajectories(5)
    broken = write(
        tmp_path / "runs.jsonl", [lines[0]], "{not json\n" + "".join(json.dumps(x) + "\n" for x in lines[2:])
    )
    out = tmp_path / "out"
    assert main(analyze(model, str(broken), "--out", str(out))) == 1
    assert f"{broken}:2: invalid JSON" in capsys.readouterr().err
    fixed = write(tmp_path / "runs.jsonl", lines)  # the same file, line 2 mended
    assert main(analyze(model, str(fixed), "--out", str(out), "--resume")) == 0
    assert "1 analysed, 0 failed (4 from the earlier run)" in capsys.readouterr().err
    analyses = read_jsonl(out / "analyses.jsonl")
    assert [a["job"]["line"] for a in analyses] == [1, 2, 3, 4, 5]
    assert [a["trajectory"]["id"] for a in analyses] == [x["id"] for x in lines]
    summaries = pd.read_csv(out / "summaries.csv")
    steps = pq.read_table(out / "steps.parquet").to_pandas()
    assert list(summaries["line"]) == [1, 2, 3, 4, 5]
    assert list(steps["line"]) == sorted(steps["line"]) and len(steps) == summaries["tokens"].sum()
    whole = tmp_path / "whole"  # the views equal those of an uninterrupted run, ids aside
    assert main(analyze(model, str(fixed), "--out", str(whole))) == 0
    again = pd.read_csv(whole / "summaries.csv")
    pd.testing.assert_frame_equal(summaries.drop(columns="analysis_id"), again.drop(columns="analysis_id"))
    assert (out / "headline.csv").read_text() == (whole / "headline.csv").read_text()
    assert not list(out.glob(".*reordering"))


def test_shards_cover_the_file_once(model, tmp_path, capsys):
    lines = trajectories(7)
    src = write(tmp_path / "runs.jsonl", lines[:3], "\n" + "".join(json.dumps(x) + "\n" for x in lines[3:]))
    parts = []
    for i in (0, 1):
        out = tmp_path / f"shard{i}.jsonl"
        assert main(analyze(model, str(src), "--out", str(out), "--shard", f"{i}/2")) == 0
        assert f"(shard {i}/2)" in capsys.readouterr().err
        parts.append(read_jsonl(out))
    numbers = [[a["job"]["line"] for a in part] for part in parts]
    assert numbers == [[1, 3, 5, 7], [2, 6, 8]]  # the file's own numbers (line 4 is blank)
    assert {a["job"]["shard"] for a in parts[0]} == {"0/2"} and {a["job"]["shard"] for a in parts[1]} == {
        "1/2"
    }
    ids = sorted(a["trajectory"]["id"] for part in parts for a in part)
    assert ids == sorted(x["id"] for x in lines)
    # Resuming a shard's output as another shard, or a bad spec: a clear error, nothing run.
    assert (
        main(analyze(model, str(src), "--out", str(tmp_path / "shard0.jsonl"), "--shard", "1/2", "--resume"))
        == 2
    )
    assert "written with --shard 0/2" in capsys.readouterr().err
    for bad in ("2/2", "x", "1/0"):
        assert main(analyze(model, str(src), "--out", str(tmp_path / "x.jsonl"), "--shard", bad)) == 2
        assert "--shard" in capsys.readouterr().err


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C, a scheduler's stop
def test_ctrl_c_leaves_valid_files(model, tmp_path, capsys, stop):
    src = write(tmp_path / "runs.jsonl", trajectories(256))
    out = tmp_path / "out"
    proc = spawn(model, src, out)
    wait_for_lines(proc, out / "analyses.jsonl", 64)
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "--resume" in err
    analyses = read_jsonl(out / "analyses.jsonl")  # whole lines only
    assert 64 <= len(analyses) < 256
    steps = pq.read_table(out / "steps.parquet")  # a closed Parquet file: it opens
    assert steps.num_rows == sum(a["summary"]["tokens"] for a in analyses)
    summaries = pd.read_csv(out / "summaries.csv")
    assert list(summaries["line"]) == [a["job"]["line"] for a in analyses]
    assert f"{len(analyses)} trajectories analysed" in (out / "report.html").read_text()
    assert main(analyze(model, str(src), "--out", str(out), "--resume")) == 0
    assert sorted(a["job"]["line"] for a in read_jsonl(out / "analyses.jsonl")) == list(range(1, 257))


def test_upload_limits_do_not_apply_per_line_ones_do(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VROLLOUT_MAX_LINES_PER_JOB", "2")
    monkeypatch.setenv("VROLLOUT_MAX_UPLOAD_BYTES", "100")
    monkeypatch.setenv("VROLLOUT_MAX_LINE_BYTES", "400")
    long = {"prompt": "x" * 500, "response": "y"}
    src = write(tmp_path / "runs.jsonl", [*trajectories(3), long, *trajectories(1)])
    out = tmp_path / "out.jsonl"
    assert main(analyze(model, str(src), "--out", str(out))) == 1
    err = capsys.readouterr().err
    assert f"{src}:4: the line is {len(json.dumps(long))} bytes, over the limit of 400" in err
    assert [a["job"]["line"] for a in read_jsonl(out)] == [1, 2, 3, 5]


def test_rows_come_one_at_a_time_with_the_per_line_limit(tmp_path):
    """What the stream reads (core.sources.iter_rows on a path): the first row before the rest,
    a line over the limit named (and skipped unread), no limit on the number of lines."""
    settings = Settings(max_line_bytes=100, max_lines_per_job=2)
    src = tmp_path / "runs.jsonl"
    src.write_bytes(b'{"a": 1}\n\n' + b'{"b": "' + b"z" * 5000 + b'"}\n{bad\n\xff\n{"c": 3}')
    rows = iter_rows(src, name=src.name, settings=settings)
    assert next(rows) == (1, {"a": 1})
    rest = list(rows)
    assert [n for n, _ in rest] == [3, 4, 5, 6] and rest[-1] == (6, {"c": 3})
    assert isinstance(rest[0][1], LineError) and "5009 bytes, over the limit of 100" in rest[0][1].error
    assert "invalid JSON" in rest[1][1].error and "not UTF-8" in rest[2][1].error
    assert parse_shard("1/3") == (1, 3) and parse_shard(None) is None


def test_lines_with_a_training_step_get_the_drift_table(model, tmp_path, capsys):
    """`vrollout analyze --out DIR` (streamed) writes drift.csv and its report table, as the
    in-memory `write_dataset` does, when lines carry a step."""
    lines = [{**line, "step": 10 * (i % 3)} for i, line in enumerate(trajectories(6, references=True))]
    out = tmp_path / "streamed"
    assert main(analyze(model, str(write(tmp_path / "runs.jsonl", lines)), "--out", str(out))) == 0
    capsys.readouterr()
    whole = tmp_path / "whole"
    whole.mkdir()
    pair = SimpleNamespace(
        student=SimpleNamespace(name="tiny-model"), teacher=SimpleNamespace(name="tiny-model")
    )
    write_dataset(
        whole, "runs.jsonl", read_jsonl(out / "analyses.jsonl"), [], SimpleNamespace(pair=pair), Settings()
    )
    assert (out / "drift.csv").read_text() == (whole / "drift.csv").read_text()
    assert len(pd.read_csv(out / "drift.csv")) == 3
    assert "Drift across training steps" in (out / "report.html").read_text()
