"""``python -m scoresolve`` runs the command line (see :mod:`scoresolve.cli`)."""

import sys

from .cli import main

sys.exit(main())
