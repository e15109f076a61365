"""`python -m bench all [--quick]` runs every benchmark and rebuilds BENCHMARKS.md;
`python -m bench NAME` runs one (structural, quantize, search, landscape, finetune, peers, anchors, e2e, memory, zoo,
transfer, precision)."""

from __future__ import annotations

import importlib
import re
import sys

from bench.common import RESULTS, ROOT

BENCHES = {
    "structural": "bench.structural_bench",
    "quantize": "bench.quantize_bench",
    "search": "bench.search_bench",
    "landscape": "bench.landscape_bench",
    "finetune": "bench.finetune_bench",
    "peers": "bench.peers_bench",
    "anchors": "bench.anchors_bench",
    "e2e": "bench.e2e_bench",
    "memory": "bench.memory_bench",
    "zoo": "bench.zoo_bench",
    "transfer": "bench.transfer_bench",
    "precision": "bench.precision_bench",
}
# benchmarks that need an environment of their own: `all` skips them, with their message, when it is missing
OPTIONAL = {"zoo"}
# how each benchmark spells quick mode (the search benchmark takes an episode budget instead)
QUICK_ARGS = {"search": ["--episodes", "16", "--speed-plans", "4"]}
ORDER = list(BENCHES)


def assemble() -> None:
    parts = [(ROOT / "bench" / "BENCHMARKS_HEAD.md").read_text().rstrip()]
    for name in ORDER:
        # a benchmark's main result, then its companions (e.g. search_landscape.md)
        for p in [RESULTS / f"{name}.md", *sorted(RESULTS.glob(f"{name}_*.md"))]:
            if not p.exists():
                continue
            # images sit beside their result file; BENCHMARKS.md is two folders up
            text = re.sub(r"\]\(([\w.-]+\.png)\)", lambda m: f"]({RESULTS.relative_to(ROOT).as_posix()}/{m[1]})", p.read_text())
            parts.append(text.rstrip())
    (ROOT / "BENCHMARKS.md").write_text("\n\n".join(parts) + "\n")


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    name, rest = argv[0], argv[1:]
    names = ORDER if name == "all" else [name]
    for n in names:
        if n not in BENCHES:
            raise SystemExit(f"unknown benchmark '{n}'; choose from all, {', '.join(ORDER)}")
        module = importlib.import_module(BENCHES[n])
        print(f"== bench {n}", flush=True)
        args = [a for a in rest if a != "--quick"] + QUICK_ARGS.get(n, ["--quick"]) if "--quick" in rest else rest
        try:
            module.main(args)
        except SystemExit as e:
            if name != "all" or n not in OPTIONAL or not isinstance(e.code, str):
                raise
            print(f"skipped {n}: {e.code}", flush=True)
    assemble()


if __name__ == "__main__":
    main(sys.argv[1:])
