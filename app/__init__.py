"""Virtual Rollout: replay a student's trajectory through a teacher, token by token.

`vrollout.load()` is the notebook API (app/notebook.py). Importing the package is cheap: the
models and torch load when `load` is called, not before.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Analysis", "VirtualRollout", "__version__", "load"]
_NOTEBOOK = ("Analysis", "VirtualRollout", "load")


def __getattr__(name: str) -> Any:
    """`load`, `Analysis` and `VirtualRollout`, imported on first use (PEP 562)."""
    if name in _NOTEBOOK:
        from vrollout import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'vrollout' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_NOTEBOOK])
