"""Fake worker that runs out of GPU memory unless it runs on the CPU, where it succeeds."""
import sys

from scripts._fake_common import parse_args, record_invocation, run_ok

if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    if args.device == "cpu":
        sys.exit(run_ok(sys.argv[1:]))
    record_invocation(args)
    print("PROGRESS 20 inference", flush=True)
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr, flush=True)
    print("ERROR CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)", file=sys.stderr, flush=True)
    sys.exit(1)
