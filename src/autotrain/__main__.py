"""`python -m autotrain` is the `aitraining` command."""

import sys

from autotrain.cli import main

sys.exit(main())
