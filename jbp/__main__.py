"""``python -m jbp`` is the ``jbp`` command."""

from jbp.cli import main

raise SystemExit(main())
