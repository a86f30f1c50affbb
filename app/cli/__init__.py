"""The `vrollout` command: one module per subcommand (analyze, localize, pedagogical), `main` here."""

from vrollout.cli.commands import main

__all__ = ["main"]
