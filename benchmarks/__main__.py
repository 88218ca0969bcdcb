"""``make bench``: every benchmark module that declares ``MAKE_BENCH`` (see :mod:`benchmarks.common`),
each in its own process with those arguments, then the summary against the declared targets.

    python -m benchmarks            # what make bench runs
"""

from __future__ import annotations

import subprocess
import sys

from .common import discover


def main() -> int:
    for name, module in discover().items():
        if isinstance(module, str):
            print(f"[bench] {name}: cannot be imported here ({module}); skipped")
            continue
        args = getattr(module, "MAKE_BENCH", None)
        if args is None:
            continue
        print(f"[bench] python -m benchmarks.{name} {' '.join(args)}".rstrip(), flush=True)
        subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], check=True)
    return subprocess.run([sys.executable, "-m", "benchmarks.summary"]).returncode


if __name__ == "__main__":
    raise SystemExit(main())
