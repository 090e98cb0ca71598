"""``python -m bnbench`` is the ``bnbench`` command."""

from bnbench.cli import main

raise SystemExit(main())
