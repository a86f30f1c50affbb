"""Models split across devices by accelerate (device_map / max_memory settings): the same
numbers as the unsplit models. This machine has no GPU, so the split is CPU + disk offloading:
offloaded weights sit on "meta" and are brought in module by module by accelerate's hooks."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest
import torch
from support import REAL_CACHE
from support.tiny import tiny_model, tiny_tokenizer
from vrollout.cli.commands import _model_flags, _settings
from vrollout.config import Settings
from vrollout.local.engine import replay_batch
from vrollout.local.pedagogical import Policy, RolloutItem, pedagogical_rollouts
from vrollout.models import load_model, placement_options
from vrollout.pipeline.analyzer import Analyzer

# Every layer of a 2-layer Llama named: the embedding, a layer and the head on disk.
DISK_MAP = {
    "model.embed_tokens": "disk",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "disk",
}
REQUEST = {
    "prompt": "What is 17*23?",
    "response": "17*23 = 381. Let",
    "privileged": "391",
    "reference_answer": "391",
    "continuation_tokens": 4,
    "recovery": True,
    "recovery_max_new_tokens": 4,
}
PEDAGOGICAL = {
    "prompt": "What is 17*23?",
    "privileged": "391",
    "threshold": 0.2,
    "sweep": [0.05],
    "generation": {"max_new_tokens": 8, "temperature": 1.0, "seed": 3},
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny student (seed 0) and a different tiny teacher (seed 5), saved as model folders
    (accelerate places weights while loading them from a checkpoint)."""
    root = tmp_path_factory.mktemp("tiny-models")
    tok = tiny_tokenizer()
    out = []
    for name, seed in (("student", 0), ("teacher", 5)):
        tiny_model(len(tok), seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out.append(root / name)
    return out[0], out[1]


def analyzer(tmp_path: Path, **settings: object) -> Analyzer:
    return Analyzer.from_settings(Settings(cache_dir=tmp_path, device="cpu", **settings))


def numbers(analysis: dict) -> dict:
    """What must not change with placement: every step, the summary, recovery."""
    return {k: analysis.get(k) for k in ("steps", "summary", "recovery")}


def rollout(result: dict) -> dict:
    """A pedagogical result without what names or dates it."""
    return {k: v for k, v in result.items() if k not in ("id", "analysis_id", "created_at")}


def assert_same(split: object, whole: object, path: str = "") -> None:
    """Equal, floats within float32 rounding (1e-4 relative, 1e-5 absolute). An analysis is
    bit-identical on one CPU; a pedagogical step's head takes another BLAS order on a split model
    (`pedagogical.few_rows_logits` reads a plain head's weights directly, not a hooked one's), so
    its log-probs differ in the last bits; tokens and interventions must not."""
    if isinstance(whole, float):
        assert split == pytest.approx(whole, rel=1e-4, abs=1e-5), path
    elif isinstance(whole, dict):
        assert isinstance(split, dict) and split.keys() == whole.keys(), path
        for k in whole:
            assert_same(split[k], whole[k], f"{path}.{k}")
    elif isinstance(whole, list | tuple):
        assert type(split) is type(whole) and len(split) == len(whole), path
        for i, (a, b) in enumerate(zip(split, whole, strict=True)):
            assert_same(a, b, f"{path}[{i}]")
    else:
        assert split == whole, path


def test_offloaded_teacher_and_student_give_the_unsplit_numbers(folders, tmp_path):
    student, teacher = folders
    whole = analyzer(tmp_path / "a", student=str(student), teacher=str(teacher))
    split = analyzer(
        tmp_path / "b",
        student=str(student),
        teacher=str(teacher),
        teacher_device_map=json.dumps(DISK_MAP),
        student_max_memory='{"cpu": "250KB"}',  # auto: what does not fit (the layers, the head) goes to disk
    )
    t, s = split.pair.teacher, split.pair.student
    # The first parameter (the embedding) is offloaded: inputs go to its execution device.
    assert next(t.model.parameters()).device.type == "meta"
    assert t.input_device == torch.device("cpu") == t.device
    assert t.placement() == {"modules": {"cpu": 3, "disk": 3}, "offloaded": True}
    assert s.placement()["offloaded"] is True and s.placement()["modules"].keys() == {"cpu", "disk"}
    described = split.pair.describe()
    assert described["teacher"]["device_map"] == t.placement()
    assert whole.pair.describe()["teacher"]["device_map"] is None
    assert list((tmp_path / "b" / "offload").iterdir())  # the default offload folder, per role

    a, b = whole.analyze(REQUEST), split.analyze(REQUEST)
    assert a["steps"][0]["teacher_continuation"]["token_ids"] and a["recovery"]["points"]
    assert_same(numbers(b), numbers(a))
    generated = {
        **{k: v for k, v in REQUEST.items() if k != "response"},
        "generation": {"max_new_tokens": 6},
    }
    assert_same(numbers(split.analyze(generated)), numbers(whole.analyze(generated)))

    items = [(ctx, ctx + [9], resp) for ctx, resp in (([5, 6, 7], [8, 9, 10, 11]), ([12, 13], [14, 15]))]
    for x, y in zip(replay_batch(whole.pair, items), replay_batch(split.pair, items), strict=True):
        assert x.teacher_top1_id == y.teacher_top1_id and x.reverse_kl == pytest.approx(
            y.reverse_kl, rel=1e-5
        )

    # Rollouts decoded together: rows of several lengths in one cache, rows leaving as they end.
    rollouts = [
        RolloutItem(
            [5, 6, 7], [5, 6, 7, 9, 9], Policy(threshold=0.2, temperature=1.0, seed=n, max_new_tokens=n)
        )
        for n in (3, 6)
    ]
    assert_same(pedagogical_rollouts(split.pair, rollouts), pedagogical_rollouts(whole.pair, rollouts))

    p, q = (rollout(x.pedagogical(x.prepare_pedagogical(PEDAGOGICAL))) for x in (whole, split))
    assert p["response_ids"] and p["num_interventions"] > 0  # a different teacher steps in
    assert_same(q, p)


def test_a_self_teacher_is_placed_by_the_student_settings_else_the_teacher_settings(folders, tmp_path):
    student, _ = folders
    shared = Settings(student=str(student), teacher_device_map="auto", cache_dir=tmp_path)
    assert placement_options(shared, "shared") == {
        "device_map": "auto",
        "offload_folder": str(tmp_path / "offload" / "shared"),
    }
    both = Settings(student_max_memory='{"cpu": "1GB"}', teacher_device_map="auto", offload_folder=tmp_path)
    assert placement_options(both, "shared") == {
        "device_map": "auto",  # max memory alone means auto
        "offload_folder": str(tmp_path / "shared"),
        "max_memory": {"cpu": "1GB"},
    }
    assert placement_options(Settings(), "teacher") == {}
    whole = analyzer(tmp_path, student=str(student))
    assert whole.pair.shared and whole.pair.student.placement() is None
    split = analyzer(tmp_path, student=str(student), teacher_device_map=json.dumps(DISK_MAP))
    assert split.pair.shared and split.pair.teacher.placement()["offloaded"] is True
    request = {k: v for k, v in REQUEST.items() if k != "recovery"}
    assert_same(numbers(split.analyze(request)), numbers(whole.analyze(request)))


def test_device_map_and_max_memory_settings_parse_and_refuse_clearly(monkeypatch):
    monkeypatch.setenv("VROLLOUT_TEACHER_MAX_MEMORY", '{"0": "20GiB", "cpu": "60GiB"}')
    monkeypatch.setenv("VROLLOUT_TEACHER_DEVICE_MAP", '{"model": "0", "lm_head": "cpu"}')
    s = Settings()
    assert s.teacher_max_memory == {0: "20GiB", "cpu": "60GiB"}  # accelerate names a GPU by its index
    assert s.teacher_device_map == {"model": 0, "lm_head": "cpu"}
    assert Settings(student_device_map="balanced").student_device_map == "balanced"
    for bad, words in [
        ({"teacher_device_map": "everywhere"}, "auto, balanced"),
        ({"teacher_device_map": "{oops"}, "not valid JSON"),
        ({"student_max_memory": '{"gpu": "1GB"}'}, "not a device"),
        ({"student_max_memory": '["1GB"]'}, "JSON object"),
    ]:
        with pytest.raises(ValueError, match=words):
            Settings(**bad)


def test_cli_flags_give_the_placement_settings(tmp_path):
    parser = argparse.ArgumentParser()
    _model_flags(parser)  # the flags of serve, analyze and localize
    args = parser.parse_args(
        [
            "--teacher-device-map",
            "auto",
            "--teacher-max-memory",
            '{"0": "20GiB", "cpu": "60GiB"}',
            "--student-device-map",
            "sequential",
            "--student-max-memory",
            '{"cpu": "2GB"}',
            "--offload-folder",
            str(tmp_path),
        ]
    )
    s = _settings(args)
    assert (s.teacher_device_map, s.teacher_max_memory) == ("auto", {0: "20GiB", "cpu": "60GiB"})
    assert (s.student_device_map, s.student_max_memory) == ("sequential", {"cpu": "2GB"})
    assert s.offload_folder == tmp_path


def test_a_split_model_loads_from_a_folder_by_load_model(folders, tmp_path):
    settings = Settings(student_device_map=json.dumps(DISK_MAP), offload_folder=tmp_path)
    model = load_model(str(folders[0]), settings, "student")
    assert model.model.hf_device_map == DISK_MAP and model.dtype == torch.float32


@pytest.mark.real_model
def test_default_model_split_with_disk_offload_gives_the_unsplit_numbers(tmp_path, capsys):
    """The embedded SmolLM2-135M (float32, ~540 MB) with 300 MB of CPU memory allowed: the
    embedding, the head and the first 12 of its 30 layers stay on the CPU, the rest go to disk.
    Analysis (every step), continuations and a pedagogical rollout with a threshold sweep equal
    the unsplit model's (recovery: the tiny test); the times are printed (README: split vs
    unsplit)."""
    base = {"cache_dir": REAL_CACHE, "device": "cpu", "offload_folder": tmp_path}
    whole = Analyzer.from_settings(Settings(**base))
    split = Analyzer.from_settings(Settings(**base, student_max_memory='{"cpu": "300MB"}'))
    placement = split.pair.student.placement()
    assert placement["offloaded"] is True and placement["modules"].get("disk", 0) > 0
    request = {
        "prompt": "What is 17*23? Answer with the number.",
        "response": "17*23 = 391. Let me check: 17*20 = 340 and 17*3 = 51.",
        "privileged": "The answer is 391.",
        "continuation_tokens": 4,
    }
    pedagogical = {**PEDAGOGICAL, "generation": {"max_new_tokens": 8, "temperature": 0.7, "seed": 1}}
    times = {}
    results = {}
    for name, a in (("unsplit", whole), ("split", split)):
        start = time.perf_counter()
        analysis = a.analyze(request)
        middle = time.perf_counter()
        rolled = rollout(a.pedagogical(a.prepare_pedagogical(pedagogical)))
        times[name] = (middle - start, time.perf_counter() - middle)
        results[name] = (numbers(analysis), rolled)
    assert results["unsplit"][0]["steps"][0]["teacher_continuation"]["token_ids"]
    assert_same(results["split"], results["unsplit"])
    with capsys.disabled():
        for name, (analysis_s, rollout_s) in times.items():
            print(
                f"\n{name}: analysis {analysis_s:.2f} s, pedagogical rollout {rollout_s:.2f} s ({placement})"
            )
