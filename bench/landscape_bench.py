"""`python -m bench landscape [--quick]`: the accuracy landscape behind the search benchmark's
agent-vs-baseline margins - N random plans per teacher scored on the validation and the held-out
images (bench/search_bench.py --landscape N; writes bench/results/search_landscape.md)."""

from __future__ import annotations

import sys

from bench import search_bench

PLANS_FULL = 160
PLANS_QUICK = 16


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    n = PLANS_QUICK if "--quick" in args else PLANS_FULL
    return search_bench.main(["--landscape", str(n), *[a for a in args if a != "--quick"]])


if __name__ == "__main__":
    raise SystemExit(main())
