"""`python -m bench.teachers [NAME ...]`: makes sure the named benchmark teachers (default: all)
exist, training the missing ones into bench/.cache/teachers, and prints where they are."""

from __future__ import annotations

import sys

from bench.teachers import NAMES, teacher_path


def main(argv: list[str]) -> int:
    names = argv or NAMES
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        print(f"error: unknown teacher {', '.join(unknown)}; choose from {', '.join(NAMES)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"{name}: {teacher_path(name)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
