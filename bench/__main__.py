"""`python -m bench`: see bench/cli.py and BENCHMARKS.md."""

import os
import sys

from bench.cli import main

if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # sdk-python #300: runtime teardown must not change the exit code
