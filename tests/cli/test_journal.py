"""records.jsonl of `vrollout pedagogical --resume` (cli/journal.py), without a model: records
come back in line order however many times a run is resumed."""

from __future__ import annotations

import json

from vrollout.cli.journal import RECORDS, Journal


def run(out, resume: bool, new: list[int]) -> list[int]:
    journal = Journal(out, resume)
    lines = [record["line"] for record in journal.merged({"line": n, "x": n * 10} for n in new)]
    journal.close()
    return lines


def test_a_line_that_failed_before_and_runs_on_resume_keeps_its_place_in_a_later_resume(tmp_path):
    assert run(tmp_path, False, [1, 2, 4]) == [1, 2, 4]  # line 3 failed (a busy model)
    assert run(tmp_path, True, [3]) == [1, 2, 3, 4]  # records.jsonl is now 1, 2, 4, 3
    # resumed again: the earlier records in line order, whatever order the file has them in
    assert run(tmp_path, True, [5]) == [1, 2, 3, 4, 5]
    records = [json.loads(raw) for raw in (tmp_path / RECORDS).read_text().splitlines()]
    assert sorted(r["line"] for r in records) == [1, 2, 3, 4, 5]
    assert all(r["x"] == r["line"] * 10 for r in records)


def test_a_half_written_last_record_is_cut_off_and_redone(tmp_path):
    assert run(tmp_path, False, [1, 2]) == [1, 2]
    with (tmp_path / RECORDS).open("ab") as f:
        f.write(b'{"line": 3, "x"')  # killed while writing line 3
    journal = Journal(tmp_path, True)
    assert journal.done == {1, 2}
    assert [r["line"] for r in journal.merged(iter([{"line": 3, "x": 30}]))] == [1, 2, 3]
    journal.close()
    assert [json.loads(raw)["line"] for raw in (tmp_path / RECORDS).read_text().splitlines()] == [1, 2, 3]
