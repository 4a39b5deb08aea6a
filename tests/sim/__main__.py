"""python -m tests.sim [--seeds N] [--first S] [--seconds T] [--seed S]: run the replication
simulator over many seeds (or one, printing its trace) and report the first broken invariant."""

import argparse
import sys
import time

from tests.sim.cluster import InvariantBroken, run_seed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    ap.add_argument("--seeds", type=int, default=1000, help="how many seeds (default 1000)")
    ap.add_argument("--first", type=int, default=0, help="the first seed (default 0)")
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="simulated seconds of faults per seed (default 20)")
    ap.add_argument("--seed", type=int, help="run this one seed and print its trace")
    args = ap.parse_args(argv)
    if args.seed is not None:
        try:
            sim = run_seed(args.seed, args.seconds)
        except InvariantBroken as e:
            print(e)
            return 1
        print("\n".join(sim.trace))
        print(f"seed {args.seed}: every invariant held; {len(sim.checker.acks)} acknowledged")
        return 0
    started = time.monotonic()
    acked = 0
    for seed in range(args.first, args.first + args.seeds):
        try:
            acked += len(run_seed(seed, args.seconds).checker.acks)
        except InvariantBroken as e:
            print(e)
            return 1
    print(f"{args.seeds} seeds in {time.monotonic() - started:.1f}s: every invariant held; "
          f"{acked} acknowledged records checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
