"""``python -m diffmix <job> ...``: the ``diffmix`` command (:func:`diffmix.cli.main`)."""

from diffmix.cli import main

raise SystemExit(main())
