"""Fake worker that fails the way the real CLI does: non-zero exit, last stderr line ``ERROR <message>``."""
import sys

from scripts._fake_common import parse_args, progress, record_invocation

if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    record_invocation(args)
    progress(10, "reading input")
    print("Traceback (most recent call last): ...", file=sys.stderr, flush=True)
    print(f"ERROR {args.inputs[0]}: cannot read the image (not a volume file)", file=sys.stderr, flush=True)
    sys.exit(2)
