"""Run every benchmark, one after another: ``.venv/bin/python -m bench [--only 1,3,6]``.

Each runs as its own process (as with its own command), so a failure or a Ctrl-C in one leaves nothing
behind; the tables go to stdout, the plots to ``docs/img/``. About 9 minutes in all on 2 cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench import _common

BENCHMARKS = {
    1: "bench.proxy_latency",
    2: "bench.streaming",
    3: "bench.provisioning",
    4: "bench.api_economy",
    5: "bench.footprint",
    6: "bench.ranking",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="", help="comma-separated benchmark numbers (default: all)")
    args = parser.parse_args()
    chosen = [int(x) for x in args.only.split(",") if x.strip()] or list(BENCHMARKS)
    started = time.monotonic()
    failed = []
    for number in chosen:
        proc = subprocess.Popen([sys.executable, "-m", BENCHMARKS[number]], cwd=_common.ROOT)
        try:
            code = proc.wait()
        finally:
            _common.stop_process(proc, timeout_s=60)
        if code != 0:
            failed.append(f"{number} ({BENCHMARKS[number]}: exit {code})")
    print(
        f"\nall benchmarks: {time.monotonic() - started:.0f} s"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    _common.main_guard(main)
