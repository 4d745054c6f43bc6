"""``python -m fastflow``: the ``fastflow`` command."""

import sys

from fastflow.cli import main

sys.exit(main())
