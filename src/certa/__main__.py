"""``python -m certa``: the same as the ``certa`` command."""

from .cli import main

main()
