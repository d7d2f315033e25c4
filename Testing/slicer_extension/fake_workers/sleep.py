"""Fake worker that hangs (with a child process of its own) until it is cancelled.

Writes the pids of itself and its child to ``<out>/pids.txt`` so a test can check both are gone.
"""
import subprocess
import sys
import time
from pathlib import Path

from scripts._fake_common import parse_args, progress, record_invocation

if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    record_invocation(args)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    pids = Path(args.out) / "pids.txt"
    pids.with_suffix(".tmp").write_text(f"{child.pid}\n")
    pids.with_suffix(".tmp").replace(pids)
    progress(5, "waiting forever")
    time.sleep(600)
