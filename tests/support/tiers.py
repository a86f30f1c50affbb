"""The test tiers: `slow` is set on whatever needs the real model, a browser, a server or a
training loop in a subprocess, or vLLM (tests/conftest.py calls `mark_tiers` from its collection
hook); `make test` runs the rest, the fast tier (`-m "not slow"`), `make test-all` everything."""

from __future__ import annotations

from pathlib import Path

import pytest

# What makes a test slow, read from what it asks for. Fixture names count wherever they appear in
# the test's fixture closure (a fixture built on real_analyzer is slow too).
SLOW_FIXTURES = {
    "real_analyzer": "the real default model",
    "real_client": "the real default model",
    "browser": "headless Chromium",
    "trl_table": "a GRPOTrainer step (tests/inputs/test_presets.py)",
    "trl_tool_table": "a GRPOTrainer step with a tool (tests/inputs/test_agent_presets.py)",
}
SLOW_MARKERS = {
    "real_model": "the real default model",
    "browser": "headless Chromium",
    "vllm": "real vLLM servers",
}
# What neither fixtures nor markers show: tests that start a server, a CLI run or a training loop
# in a subprocess, or load the real model themselves; by reason: node ids, or files (every test in
# them). An entry that matches nothing in a collected file is an error, so a rename cannot drop a
# test out of its tier silently.
SLOW_TESTS = {
    "a uvicorn subprocess": [
        "tests/web/test_load.py",
        "tests/web/test_ped_jobs_kill.py",
        "tests/web/test_limits.py::test_running_out_of_file_descriptors_logs_a_line_not_a_traceback_each",
    ],
    "a subprocess killed or interrupted mid-run": [
        "tests/web/test_hardening.py::test_killed_while_writing_keeps_every_committed_analysis",
        "tests/cli/test_stream.py::test_resume_after_a_killed_run",
        "tests/cli/test_stream.py::test_a_line_that_failed_and_succeeds_on_resume_is_put_back_in_order",
        "tests/cli/test_stream.py::test_ctrl_c_leaves_valid_files",
    ],
    "builds the wheel and installs it in a fresh environment": [
        "tests/test_package.py::test_the_wheel_holds_the_package_and_its_data",
        "tests/test_package.py::test_the_fresh_environment_imports_the_wheel_and_its_declared_dependencies",
    ],
    "`vrollout serve` loads the real default model before it asks the teacher server": [
        "tests/cli/test_cli_errors.py::test_a_vllm_server_that_does_not_answer_stops_serve_before_it_starts",
    ],
    "a training loop": [
        "tests/integrations/test_trl.py::test_sft_logs_every_n_steps_and_stores_what_serve_shows",
        "tests/integrations/test_trl.py::test_distillation_trainer_teacher_is_the_one_replayed",
        "tests/integrations/test_trl.py::test_grpo_trainer",
    ],
}
# Timeouts above the ini's per-test default (pytest-timeout counts fixture set-up, which for
# these starts servers).
TIMEOUT_S = {"vllm": 1800}


def slow_reason(item: pytest.Item) -> str | None:
    """Why `item` belongs to the slow tier, or None. A test marked `smoke` stays in the fast tier
    whatever it uses: the one quick run of the real default model that `make test` keeps."""
    if item.get_closest_marker("smoke"):
        return None
    for name, why in SLOW_MARKERS.items():
        if item.get_closest_marker(name):
            return f"marker {name}: {why}"
    for name, why in SLOW_FIXTURES.items():
        if name in getattr(item, "fixturenames", ()):
            return f"fixture {name}: {why}"
    for why, keys in SLOW_TESTS.items():
        if any(listed(item, key) for key in keys):
            return why
    return None


def listed(item: pytest.Item, key: str) -> bool:
    """Whether SLOW_TESTS' entry `key` names `item`: its file, or its node id (parameters aside)."""
    file, _, name = key.partition("::")
    return item_file(item) == file and (not name or item.nodeid.split("[")[0].endswith("::" + name))


def item_file(item: pytest.Item) -> str:
    """The test's file as SLOW_TESTS names it: relative to the root (tests/web/test_load.py)."""
    path = Path(item.path)
    return (
        path.relative_to(item.config.rootpath).as_posix()
        if path.is_relative_to(item.config.rootpath)
        else str(path)
    )


def mark_tiers(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks the slow tier and the longer timeouts; refuses a second smoke test and a stale entry."""
    smoke = [item.nodeid for item in items if item.get_closest_marker("smoke")]
    if len(smoke) > 1:
        raise pytest.UsageError(
            f"one smoke test of the real model in the fast tier, not {len(smoke)}: {smoke}"
        )
    # A listed test must exist in its file's module (when the file is collected at all): looked
    # up there, not among the items, which a node id or -k on the command line narrows.
    modules = {item_file(item): item.module for item in items if getattr(item, "module", None)}
    for key in (key for keys in SLOW_TESTS.values() for key in keys):
        file, _, name = key.partition("::")
        if name and file in modules and not hasattr(modules[file], name.split("::")[0]):
            raise pytest.UsageError(f"tests/support/tiers.py SLOW_TESTS names no test: {key}")
    for item in items:
        if slow_reason(item):
            item.add_marker(pytest.mark.slow)
        for marker, seconds in TIMEOUT_S.items():
            if item.get_closest_marker(marker) and not item.get_closest_marker("timeout"):
                item.add_marker(pytest.mark.timeout(seconds))
