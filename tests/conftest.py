"""Shared fixtures, a tiny random model pair (fast) and the real default model (honest), and the
tiers: the collection hook marks `slow` whatever needs the real model, a browser, a server or a
training loop in a subprocess, or vLLM (tests/support/tiers.py); `make test` runs the rest.

Nothing heavy is imported at module level: collecting a folder whose tests need no torch (and
`pytest --co`) must not pay for importing it. The fixtures import what they build."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# The in-process TestClient names its host "testserver": the apps the tests build answer to it
# as a deployment would to a name it is given (tests of the Host check set allowed_hosts).
os.environ.setdefault("VROLLOUT_ALLOWED_HOSTS", "testserver")
# Under pytest-xdist each worker gets its share of the cores for torch's threads (read when torch
# is imported, after this file): N workers with a thread per core each would oversubscribe the
# cores N times.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

from support import REAL_CACHE, tiny_settings  # noqa: E402
from support.tiers import mark_tiers  # noqa: E402

if TYPE_CHECKING:
    from vrollout.models import ModelPair
    from vrollout.pipeline.analyzer import Analyzer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_tiers(config, items)


@pytest.fixture(scope="session")
def tiny() -> ModelPair:
    from support.tiny import tiny_pair

    return tiny_pair()


@pytest.fixture(scope="session")
def tiny_folder(tiny: ModelPair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny student saved as a model folder, for what loads models itself (the CLI)."""
    folder = tmp_path_factory.mktemp("tiny") / "tiny-model"
    tiny.student.model.save_pretrained(folder)
    tiny.student.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def real_analyzer(tmp_path_factory: pytest.TempPathFactory) -> Analyzer:
    from vrollout.config import Settings
    from vrollout.pipeline.analyzer import Analyzer

    settings = Settings(database=tmp_path_factory.mktemp("real") / "db.sqlite3", cache_dir=REAL_CACHE)
    return Analyzer.from_settings(settings)


@pytest.fixture
def tiny_client(tiny: ModelPair, tmp_path: Path):
    from fastapi.testclient import TestClient
    from vrollout.pipeline.analyzer import Analyzer
    from vrollout.web.app import create_app

    settings = tiny_settings(tmp_path)
    app = create_app(settings, analyzer=Analyzer(tiny, settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="session")
def real_client(real_analyzer: Analyzer, tmp_path_factory: pytest.TempPathFactory):
    from fastapi.testclient import TestClient
    from vrollout.web.app import create_app

    settings = real_analyzer.settings
    app = create_app(settings, analyzer=real_analyzer)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, one per test module (tests/support/browser.py)."""
    from support.browser import launched

    yield from launched()
