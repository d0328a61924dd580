"""``python -m lk_scatterlight.cli``: the ``lk-scatterlight`` command."""

import sys

from . import main

sys.exit(main())
