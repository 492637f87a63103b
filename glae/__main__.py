"""``python -m glae`` is the ``glae`` command (torchrun needs a module to start)."""

import sys

from .cli import main

sys.exit(main())
