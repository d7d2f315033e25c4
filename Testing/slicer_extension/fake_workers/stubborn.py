"""Fake worker that ignores SIGTERM (as a worker stuck in native code may), with a child that ignores it too.

Writes the pids of itself and its child to ``<out>/pids.txt``; only SIGKILL stops them.
"""
import signal
import subprocess
import sys
import time
from pathlib import Path

from scripts._fake_common import parse_args, progress, record_invocation

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    args = parse_args(sys.argv[1:])
    record_invocation(args)
    child = subprocess.Popen([sys.executable, "-c",
                              "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    pids = Path(args.out) / "pids.txt"
    pids.with_suffix(".tmp").write_text(f"{child.pid}\n")
    pids.with_suffix(".tmp").replace(pids)
    progress(5, "ignoring SIGTERM")
    time.sleep(600)
