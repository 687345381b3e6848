"""``python -m certa.cli``."""

from . import main

main()
