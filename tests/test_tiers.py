"""The tiers' collection hook (tests/support/tiers.py) on a small tree of its own: what it marks
slow, the one smoke test it keeps fast, a longer timeout for vLLM, and the errors that keep its
list honest."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
addopts = --strict-markers
markers =
    slow: slow tier
    smoke: the real-model test kept fast
    real_model: real model
    browser: Chromium
    vllm: vLLM servers
"""

CONFTEST = """
import pytest
from support.tiers import mark_tiers


def pytest_collection_modifyitems(config, items):
    mark_tiers(config, items)


@pytest.fixture
def real_analyzer():
    return None


@pytest.fixture
def built_on_the_real_model(real_analyzer):
    return None


@pytest.fixture
def browser():
    return None
"""

TESTS = """
import pytest


def test_plain():
    pass


def test_real(real_analyzer):
    pass


def test_through_another_fixture(built_on_the_real_model):
    pass


def test_chromium(browser):
    pass


@pytest.mark.real_model
def test_marked():
    pass


@pytest.mark.vllm
def test_servers(request):
    assert request.node.get_closest_marker("timeout").args == (1800,)


@pytest.mark.smoke
@pytest.mark.real_model
def test_smoke(real_analyzer):
    pass
"""

# A file that SLOW_TESTS names test by test: the training loops are slow, the rest is not.
TRL = """
import pytest


def test_sft_logs_every_n_steps_and_stores_what_serve_shows():
    pass


def test_distillation_trainer_teacher_is_the_one_replayed():
    pass


@pytest.mark.parametrize("steps", [1, 2])
def test_grpo_trainer(steps):
    pass


def test_clear_errors():
    pass
"""


@pytest.fixture
def tree(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.mkdir("tests")
    (pytester.path / "tests" / "conftest.py").write_text(CONFTEST)
    (pytester.path / "tests" / "test_kinds.py").write_text(TESTS)
    (pytester.path / "tests" / "integrations").mkdir()
    (pytester.path / "tests" / "integrations" / "test_trl.py").write_text(TRL)
    return pytester


def run(tree: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest on the small tree, in this process. importlib mode: its test_trl.py must not meet
    the real tests/integrations/test_trl.py that this process (an xdist worker) may have imported."""
    return tree.runpytest("-p", "no:cacheprovider", "--import-mode=importlib", *args)


def collected(result: pytest.RunResult) -> set[str]:
    return {line for line in result.outlines if line.startswith("tests/")}


def test_slow_is_what_uses_the_real_model_a_browser_vllm_or_a_listed_training_loop(tree):
    result = run(tree, "--co", "-q", "-m", "slow")
    assert collected(result) == {
        "tests/test_kinds.py::test_real",
        "tests/test_kinds.py::test_through_another_fixture",
        "tests/test_kinds.py::test_chromium",
        "tests/test_kinds.py::test_marked",
        "tests/test_kinds.py::test_servers",
        "tests/integrations/test_trl.py::test_sft_logs_every_n_steps_and_stores_what_serve_shows",
        "tests/integrations/test_trl.py::test_distillation_trainer_teacher_is_the_one_replayed",
        "tests/integrations/test_trl.py::test_grpo_trainer[1]",
        "tests/integrations/test_trl.py::test_grpo_trainer[2]",
    }
    fast = run(tree, "--co", "-q", "-m", "not slow")
    assert collected(fast) == {
        "tests/test_kinds.py::test_plain",
        "tests/test_kinds.py::test_smoke",
        "tests/integrations/test_trl.py::test_clear_errors",
    }


def test_vllm_tests_get_a_longer_timeout(tree):
    run(tree, "-q", "-k", "test_servers").assert_outcomes(passed=1)


def test_a_listed_test_that_is_gone_is_an_error(tree):
    (tree.path / "tests" / "integrations" / "test_trl.py").write_text("def test_clear_errors():\n    pass\n")
    result = run(tree, "--co", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "SLOW_TESTS names no test: tests/integrations/test_trl.py::test_sft_logs" in result.stderr.str()


def test_a_listed_file_narrowed_to_one_test_is_no_error(tree):
    narrowed = run(tree, "--co", "-q", "tests/integrations/test_trl.py::test_clear_errors")
    assert narrowed.ret == pytest.ExitCode.OK
    assert collected(narrowed) == {"tests/integrations/test_trl.py::test_clear_errors"}


def test_a_second_smoke_test_is_an_error(tree):
    smoke = "import pytest\n\n\n@pytest.mark.smoke\ndef test_also_smoke():\n    pass\n"
    (tree.path / "tests" / "test_more.py").write_text(smoke)
    result = run(tree, "--co", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "one smoke test of the real model in the fast tier, not 2" in result.stderr.str()
