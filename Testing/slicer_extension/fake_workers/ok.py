"""Fake worker that succeeds: protocol lines, a label map and a result JSON per input."""
import sys

from scripts._fake_common import run_ok

if __name__ == "__main__":
    sys.exit(run_ok(sys.argv[1:]))
