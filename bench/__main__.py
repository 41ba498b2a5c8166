"""`python -m bench [--quick] [--n 1,16,64,256] [--out DIR]`."""

import sys

from bench.run import main

sys.exit(main())
