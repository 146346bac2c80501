"""``python -m nn``: the command line (see :mod:`nn.cli`)."""
import sys

from .cli import main

sys.exit(main())
