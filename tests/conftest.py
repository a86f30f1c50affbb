"""Shared fixtures: a tiny random model pair (fast) and the real default model (honest)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))
# The in-process TestClient names its host "testserver": the apps the tests build answer to it
# as a deployment would to a name it is given (tests of the Host check set allowed_hosts).
os.environ.setdefault("VROLLOUT_ALLOWED_HOSTS", "testserver")

from support import REAL_CACHE, tiny_settings  # noqa: E402
from support.browser import launched  # noqa: E402
from support.tiny import tiny_pair  # noqa: E402
from vrollout.config import Settings  # noqa: E402
from vrollout.local.models import ModelPair  # noqa: E402
from vrollout.pipeline.analyzer import Analyzer  # noqa: E402
from vrollout.web.app import create_app  # noqa: E402


@pytest.fixture(scope="session")
def tiny() -> ModelPair:
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
    settings = Settings(database=tmp_path_factory.mktemp("real") / "db.sqlite3", cache_dir=REAL_CACHE)
    return Analyzer.from_settings(settings)


@pytest.fixture
def tiny_client(tiny: ModelPair, tmp_path: Path):
    settings = tiny_settings(tmp_path)
    app = create_app(settings, analyzer=Analyzer(tiny, settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="session")
def real_client(real_analyzer: Analyzer, tmp_path_factory: pytest.TempPathFactory):
    settings = real_analyzer.settings
    app = create_app(settings, analyzer=real_analyzer)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, one per test module (tests/support/browser.py)."""
    yield from launched()
