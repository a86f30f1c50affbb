"""`python -m vrollout.cli`: the same as the `vrollout` command."""

from vrollout.cli import main

raise SystemExit(main())
