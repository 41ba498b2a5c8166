"""`python -m ops ...`: the `llm-runner` command line where the console script is not on PATH."""

import sys

from ops.cli import main

sys.exit(main())
