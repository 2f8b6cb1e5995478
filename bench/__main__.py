"""`python -m bench NAME [args]` (`huse-bench`): run one benchmark module's own CLI."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

BENCHES = {"api": "bench.bench_api", "embed": "bench.bench_embed", "index": "bench.bench_index"}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in BENCHES:
        print(f"usage: huse-bench {{{','.join(BENCHES)}}} [args]  (each has its own --help)",
              file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    code = importlib.import_module(BENCHES[args[0]]).main(args[1:])
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
