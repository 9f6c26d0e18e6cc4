"""Run the benchmark suite and print its table. ``python -m benchmarks --help`` for options."""

import sys

from .suite import main

sys.exit(main())
