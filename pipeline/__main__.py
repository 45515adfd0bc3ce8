"""``python -m pipeline`` is the ``symprep`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
