"""cluster.ray without Ray (the fast tier): the worker class run in process gives each line's
analysis as the plain pipeline does, bad lines as their errors and unknown keys by line; the
read task's blocks skip what is done and end with a file's error; the flags' bounds; without
Ray installed --ray says how to install it."""

from __future__ import annotations

import json
import pickle
import sys

import pyarrow as pa
import pytest
from support import tiny_settings
from support.ray_runs import sibling_lines
from vrollout.cli.analyze import analyze_lines
from vrollout.cli.commands import main
from vrollout.cluster.ray import (
    COLUMNS,
    Cluster,
    DriverModels,
    Keep,
    LineWorker,
    ModelsNotLoaded,
    Task,
    _results,
    _schema,
    read_blocks,
)
from vrollout.cluster.siblings import JUDGED, fold, judge
from vrollout.config import Settings
from vrollout.errors import BadTrajectory, VRError
from vrollout.inputs.paths import Sources
from vrollout.notebook import VirtualRollout
from vrollout.pipeline.analyzer import Analyzer
from vrollout.pipeline.lines import file_lines, run_lines

LINES = [
    {"id": "a", "prompt": "What is 2+2?", "response": "It is 4.", "privileged": "4", "colour": "red"},
    {"id": "b", "prompt": "Name a colour.", "response": "Blue."},
]


def batch(rows: list[tuple[int, object]]) -> pa.Table:
    return pa.table(
        {
            "number": [n for n, _ in rows],
            "row": [json.dumps(r) if not isinstance(r, str) else None for _, r in rows],
            "error": [r if isinstance(r, str) else None for _, r in rows],
            "fatal": [None] * len(rows),
        },
        schema=_schema(),
    )


def test_the_worker_gives_what_the_plain_pipeline_gives(tiny, tmp_path):
    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    options = {"top_k": 3}
    params = {"options": options, "privileged": None, "job": {"id": None}, "siblings": None}
    worker = LineWorker(analyzer.settings, Task(analyze_lines, params), analyzer=analyzer)
    got = worker(batch([(4, LINES[0]), (7, "line 7: not JSON"), (9, {"prompt": 3}), (12, LINES[1])]))
    assert got.column("number").to_pylist() == [4, 7, 9, 12]
    results, errors = got.column("result").to_pylist(), got.column("error").to_pylist()
    assert errors[1] == "line 7: not JSON" and "prompt" in errors[2] and results[1] is None
    assert json.loads(got.column("keys").to_pylist()[0]) == ["colour"]

    unknown: dict[str, list[int]] = {}
    prepare = file_lines(analyzer, options, None, unknown)

    def run(prepared):
        return analyzer.run_prepared(prepared, lambda n: {"job": {"id": None, "line": n}})

    plain = dict(run_lines([(4, LINES[0]), (12, LINES[1])], prepare, run))
    for at, number in ((0, 4), (3, 12)):
        mine, theirs = pickle.loads(results[at]), plain[number]
        assert mine["job"] == {"id": None, "line": number}
        assert [s["teacher_logprob"] for s in mine["steps"]] == pytest.approx(
            [s["teacher_logprob"] for s in theirs["steps"]], abs=1e-5
        )
    assert unknown == {"colour": [4]}


def test_read_blocks_skip_done_lines_and_end_with_a_files_error(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text("[" + ", ".join(json.dumps(x) for x in LINES * 3) + ", {broken")
    sources = Sources(str(path), Settings())
    blocks = list(read_blocks(sources, 0, 0, Keep(frozenset({2, 3}), None)))
    table = pa.concat_tables(blocks)
    assert table.column_names == list(COLUMNS)
    numbers, fatal = table.column("number").to_pylist(), table.column("fatal").to_pylist()
    assert numbers[:-1] == [1, 4, 5, 6] and fatal[:-1] == [None] * 4
    assert fatal[-1] is not None and "JSON" in fatal[-1]
    assert Keep(frozenset(), (1, 2))(2) and not Keep(frozenset(), (1, 2))(3)


def test_the_flags_bounds():
    with pytest.raises(BadTrajectory, match="--workers must be at least 1"):
        Cluster(workers=0)
    with pytest.raises(VRError, match="--gpus-per-worker"):
        Cluster(gpus=-1)


def test_without_ray_the_flag_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without it
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(LINES[0]) + "\n")
    code = main(["analyze", str(path), "--out", str(tmp_path / "out"), "--ray", "local", "--no-store"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err.strip()
        == "error: --ray needs Ray: pip install 'virtual-rollout[ray]' (or pip install 'ray[data]')"
    )


def test_the_sibling_pass_of_a_cluster_builds_the_plain_runs_index(tiny, tmp_path):
    """`judge` (a Ray Data task's work, here on one batch) folded in line order gives the index
    `Analyzer.index_siblings` builds from the same lines, bad lines skipped."""
    source = sibling_lines(tmp_path / "runs.jsonl", prompts=4)
    rows = [(n + 1, json.loads(line)) for n, line in enumerate(source.read_text().splitlines())]
    rows.insert(3, (99, {"prompt": 3}))
    analyzer = Analyzer(tiny, tiny_settings(tmp_path))
    options = {"teacher_context": "sibling"}
    plain = analyzer.index_siblings(rows, options, None)
    table = batch([(n, row) for n, row in rows] + [(100, "line 100: not JSON")])
    judged = judge(table, analyzer.settings, options, None)
    assert 99 not in judged.column("number").to_pylist()
    folded = fold(zip(*(judged.column(n).to_pylist() for n in JUDGED), strict=True), 10.0)
    assert folded.seen == plain.seen and folded.kept == plain.kept
    assert sum(len(kept) for kept in folded.kept.values()) == 6  # every correct response: 2, 1, 2, 1


def test_analyze_many_sizes_without_ray_are_refused(tiny, tmp_path):
    vr = VirtualRollout(Analyzer(tiny, tiny_settings(tmp_path)))
    with pytest.raises(TypeError, match="workers, batch_size apply with ray= only"):
        list(vr.analyze_many([LINES[0]], progress=False, workers=2, batch_size=3))


def test_models_a_worker_cannot_load_stop_the_run_with_the_plain_runs_message(tmp_path):
    settings = Settings(student=str(tmp_path / "no-such-model"), device="cpu", database=tmp_path / "db")
    worker = LineWorker(settings, Task(analyze_lines, {}))
    got = worker(batch([(1, LINES[0])]))
    with pytest.raises(ModelsNotLoaded, match="the models could not be loaded") as raised:
        list(_results(got, {}, lambda n: None))
    with pytest.raises(VRError) as plain:
        Analyzer.from_settings(settings, None)
    assert raised.value.message == plain.value.message


def test_the_driver_takes_the_models_names_from_the_first_analysis():
    driver = DriverModels(Settings(), None)
    lines = [(1, BadTrajectory("no")), (2, {"student": {"model": "s"}, "teacher": {"model": "t"}})]
    assert list(driver.watch(iter(lines))) == lines
    assert (driver.pair.student.name, driver.pair.teacher.name) == ("s", "t")
