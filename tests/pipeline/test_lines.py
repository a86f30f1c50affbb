"""The pipeline of files of lines (`pipeline.lines`): order, line errors, windows, a file that
breaks part way, and the wording of unknown keys."""

from __future__ import annotations

import pytest
from vrollout.errors import BadTrajectory, VRError
from vrollout.inputs.trajectories import LineError
from vrollout.pipeline.lines import key_warnings, run_lines


def prepare(window):
    """An odd payload is refused; an even one is prepared as its double."""
    return [(n, BadTrajectory(f"odd {x}") if x % 2 else 2 * x) for n, x in reversed(window)]


def run_backwards(prepared):
    """Groups of two, the last group first and each backwards: the pipeline puts them in order."""
    groups = [prepared[i : i + 2] for i in range(0, len(prepared), 2)]
    for group in reversed(groups):
        yield [(n, x + 1) for n, x in reversed(group)]


def rows(count):
    for n in range(1, count + 1):
        yield n, (LineError(n, f"line {n}: unreadable") if n % 5 == 0 else n * 10 + n % 2)


def test_each_line_once_in_line_order_with_its_error():
    windows, progress = [], []
    lines = run_lines(
        rows(12),
        prepare,
        run_backwards,
        window=3,
        progress=progress.append,
        window_done=lambda: windows.append(1),
    )
    out = list(lines)
    assert [n for n, _ in out] == list(range(1, 13))
    for n, result in out:
        if n % 5 == 0:
            assert isinstance(result, BadTrajectory) and result.message == f"line {n}: unreadable"
        elif n % 2:
            assert isinstance(result, VRError) and result.message == f"odd {n * 10 + 1}"
        else:
            assert result == 2 * n * 10 + 1
    assert sum(progress) == 12 and len(windows) == 4  # 3 readable lines a window, errors free


def test_kept_lines_only_and_a_broken_file_after_the_lines_before_it():
    def broken():
        yield 2, 20
        yield 4, 40
        raise BadTrajectory("the array ends mid-object")

    seen = []
    with pytest.raises(BadTrajectory, match="mid-object"):
        for n, result in run_lines(broken(), prepare, run_backwards, keep=lambda n: n != 4):
            seen.append((n, result))
    assert seen == [(2, 41)]


def test_a_line_that_never_comes_back_leaves_the_rest_in_order():
    def drops_the_first(prepared):
        yield [(n, x) for n, x in prepared if n != 1]

    out = list(run_lines([(1, 2), (2, 4), (3, 6)], prepare, drops_the_first))
    assert out == [(2, 8), (3, 12)]


def test_a_misspelt_key_is_kept_with_the_field_it_may_mean():
    found = key_warnings({"reference": [3, 9], "reward": [1]})
    assert found[0] == {
        "key": "reference",
        "warning": "`reference` is not a field: kept in meta (did you mean `reference_answer`?)",
        "lines": [3, 9],
        "count": 2,
    }
    assert found[1]["warning"] == "`reward` is not a field: kept in meta"  # nothing close: no guess
