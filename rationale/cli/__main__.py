"""``python -m rationale.cli``: the same as the ``rationale`` command."""

from rationale.cli import main

main()
