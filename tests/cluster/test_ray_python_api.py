"""`analyze_many(..., ray=...)` (the Python API's --ray) on a local Ray (the slow tier): the same
analyses, in the same order, as without it, for a path (read by Ray Data) and for trajectories
given in memory; with the sibling teacher context, whose first pass runs on the cluster too."""

from __future__ import annotations

import json

import pytest
from support.ray_runs import same, sibling_lines, write_lines

pytest.importorskip("ray")

import vrollout  # noqa: E402
from vrollout.errors import BadTrajectory  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vr(tiny_folder):
    return vrollout.load(student=str(tiny_folder), device="cpu", dtype="float32")


def dicts(results) -> list[dict]:
    return [a.to_dict() for a in results]


def test_a_path_on_ray_gives_the_plain_analyses(local_ray, vr, tmp_path):
    source = write_lines(tmp_path / "runs.jsonl", 14)
    with pytest.warns(UserWarning, match="tag"):
        plain = dicts(vr.analyze_many(source, progress=False, errors="skip", top_k=3))
    with pytest.warns(UserWarning, match="tag"):
        on_ray = dicts(
            vr.analyze_many(
                source, progress=False, errors="skip", top_k=3, ray="auto", workers=2, batch_size=4
            )
        )
    assert len(on_ray) == len(plain) == 14
    for a, b in zip(on_ray, plain, strict=True):
        same(a, b)


def test_trajectories_in_memory_on_ray_and_a_bad_one_named_by_its_index(local_ray, vr, tmp_path):
    rows = [json.loads(line) for line in write_lines(tmp_path / "runs.jsonl", 9).read_text().splitlines()]
    plain = dicts(vr.analyze_many(rows, progress=False, errors="skip"))
    on_ray = dicts(vr.analyze_many(rows, progress=False, errors="skip", ray="auto", batch_size=3))
    assert len(on_ray) == len(plain) == 9
    for a, b in zip(on_ray, plain, strict=True):
        same(a, b)
    with pytest.raises(BadTrajectory, match="^trajectory 4: "):  # the bad line, at index 4
        list(vr.analyze_many(rows, progress=False, ray="auto", batch_size=3))


def test_the_sibling_index_built_on_ray_picks_the_plain_runs_siblings(local_ray, vr, tmp_path):
    source = sibling_lines(tmp_path / "runs.jsonl", prompts=5)
    options = {"teacher_context": "sibling", "progress": False, "errors": "skip"}
    plain = dicts(vr.analyze_many(source, **options))
    on_ray = dicts(vr.analyze_many(source, **options, ray="auto", workers=2, batch_size=4))
    assert [a["teacher"]["context_text"] for a in on_ray] == [a["teacher"]["context_text"] for a in plain]
    assert len(plain) > 5  # most lines have a sibling; those without one are skipped, as without Ray
    for a, b in zip(on_ray, plain, strict=True):
        same(a, b)
