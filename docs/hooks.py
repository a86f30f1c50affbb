"""mkdocs hooks (mkdocs.yml `hooks:`): a stale settings page stops the build, and mkdocstrings is
shown where the package's source is."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
_source: tempfile.TemporaryDirectory[str] | None = None


@event_priority(100)  # before mkdocstrings' own on_config, which starts its handlers
def on_config(config: Any) -> Any:
    sys.path.insert(0, str(DOCS))
    try:
        import settings_page
    finally:
        sys.path.remove(str(DOCS))
    if settings_page.stale():
        raise PluginError(
            "docs/settings.md differs from vrollout.config.Settings: run python docs/settings_page.py"
        )

    # The package `vrollout` is the folder app/ (setuptools maps it), and griffe, which reads the
    # docstrings for mkdocstrings, finds a package only in a folder of its own name: a temporary
    # folder holding a link `vrollout` -> app/ is where it looks.
    global _source
    _source = tempfile.TemporaryDirectory(prefix="vrollout-docs-")
    (Path(_source.name) / "vrollout").symlink_to(REPO / "app", target_is_directory=True)
    python = config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})
    python.setdefault("paths", []).insert(0, _source.name)
    return config


def on_shutdown() -> None:
    if _source is not None:
        _source.cleanup()
