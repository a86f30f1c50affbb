"""--ray on a local Ray started in the test (the slow tier): the same folder as the plain run
(numbers within 1e-5, fp32 on CPU), every line once in input order when a worker actor dies
mid-batch, and a driver stopped mid-run that continues with --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.ray_runs import FLAGS, analyses, same, write_lines

ray = pytest.importorskip("ray")

from vrollout.cli.analyze import analyze_lines  # noqa: E402
from vrollout.cli.commands import main  # noqa: E402
from vrollout.cluster.ray import Cluster, Keep, Task, cluster_lines  # noqa: E402
from vrollout.config import Settings  # noqa: E402
from vrollout.inputs.paths import Sources  # noqa: E402

pytestmark = pytest.mark.slow


def test_ray_writes_the_folder_the_plain_run_writes(local_ray, tiny_folder, tmp_path, capsys):
    source = write_lines(tmp_path / "runs.jsonl", 24)
    base = ["analyze", str(source), "--student", str(tiny_folder), *FLAGS]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 1
    plain_err = capsys.readouterr().err
    assert (
        main([*base, "--out", str(tmp_path / "ray"), "--ray", "auto", "--workers", "2", "--batch-size", "5"])
        == 1
    )
    ray_err = capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "plain")) == sorted(os.listdir(tmp_path / "ray"))
    got, want = analyses(tmp_path / "ray" / "analyses.jsonl"), analyses(tmp_path / "plain" / "analyses.jsonl")
    assert (
        [a["job"]["line"] for a in got] == [a["job"]["line"] for a in want] == [*range(1, 13), *range(14, 26)]
    )
    for a, b in zip(got, want, strict=True):
        same(a, b)
    for name in ("headline.md", "headline.csv"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "plain" / name).read_text()
    # The same bad line and the same warning, said the same way.
    tail = [line for line in plain_err.splitlines() if line.startswith(str(source))]
    assert tail and tail == [line for line in ray_err.splitlines() if line.startswith(str(source))]


CRASH_MARK = "VROLLOUT_TEST_CRASH_MARK"


def crash_once(analyzer, rows, unknown, params):
    """`analyze_lines`, but the first worker to run the batch holding line 9 dies in it."""
    mark = Path(params["mark"])
    if any(n == 9 for n, _ in rows) and not mark.exists():
        mark.write_text("crashed")
        os._exit(1)  # the actor's process dies mid-batch: Ray restarts it and runs the batch again
    return analyze_lines(analyzer, rows, unknown, params)


def test_a_worker_that_dies_mid_batch_still_gives_every_line_once(local_ray, tiny_folder, tmp_path):
    source = write_lines(tmp_path / "runs.jsonl", 16)
    settings = Settings(
        student_model=str(tiny_folder), device="cpu", dtype="float32", database=tmp_path / "db"
    )
    mark = tmp_path / "crashed"
    params = {"options": {}, "privileged": None, "job": {"id": None}, "siblings": None, "mark": str(mark)}
    unknown: dict[str, list[int]] = {}
    cluster = Cluster("auto", workers=2, batch_size=4)
    lines = cluster_lines(
        Sources(str(source), settings),
        Task(crash_once, params),
        settings,
        cluster,
        keep=Keep(),
        unknown=unknown,
    )
    found = list(lines)
    assert mark.exists()  # a worker did die
    assert [n for n, _ in found] == list(range(1, 18))  # every line once, in order
    assert [n for n, r in found if not isinstance(r, dict)] == [9]  # line 9 is the bad line, once
    assert unknown == {"tag": [n for n in range(1, 18) if n != 9]}


def test_a_driver_killed_mid_run_resumes(tiny_folder, tmp_path):
    """Its own Ray (a subprocess, `--ray local`: Ray's processes share its fate); killed once
    some lines are committed, the last one perhaps half written."""
    if ray.is_initialized():
        ray.shutdown()
    # Enough lines that the run cannot finish in the moment between 8 lines on disk and the kill.
    source = write_lines(tmp_path / "runs.jsonl", 120)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "vrollout.cli", "analyze", str(source), "--out", str(out), "--student",
            str(tiny_folder), *FLAGS, "--ray", "local", "--batch-size", "4"]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    written = out / "analyses.jsonl"
    said = []  # what it printed, for the message of a run that ended on its own
    try:
        for text in proc.stderr:  # the progress bar's updates: read until some lines are on disk
            said.append(text)
            if written.exists() and len(written.read_bytes().splitlines()) >= 8:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    kept = written.read_bytes().splitlines(keepends=True) if written.exists() else []
    first = len([raw for raw in kept if raw.endswith(b"\n")])
    assert 8 <= first < 121, "".join(said[-40:])
    resumed = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 1, resumed.stderr
    assert f"resuming: {first} lines" in resumed.stderr
    assert [a["job"]["line"] for a in analyses(written)] == [n for n in range(1, 122) if n != 61]


def test_a_local_ray_runs_its_workers_at_the_plain_runs_priority():
    """Ray starts its workers at niceness 15: on a machine shared with anything (the driver
    itself), a `--ray local` run's models would get what is left of the cores."""
    from vrollout.cluster.ray import connect

    if ray.is_initialized():
        ray.shutdown()
    assert connect(Cluster("local", workers=1)) is True
    try:
        niceness = ray.get(ray.remote(lambda: os.nice(0)).remote())
        assert niceness == os.nice(0)
    finally:
        ray.shutdown()
