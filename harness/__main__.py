"""``python -m harness`` is the ``bnbench`` command."""

from harness.cli import main

raise SystemExit(main())
