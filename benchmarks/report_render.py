"""How long a finished store's report takes: terminal tables, and the HTML page with every figure
drawn (no cached figures) and with the figures cached beside the store.

    bnbench run benchmarks.toml --profile smoke          # fill the store first
    python benchmarks/report_render.py                    # benchmarks.toml, profile smoke, 3 rounds
    python benchmarks/report_render.py --manifest M.toml --profile P --repeats 5

Each side is one ``bnbench report`` process, as a user runs it (start-up, plugin loading,
analyses, rendering): "terminal" prints the tables; "html, drawn" removes the figure cache
(``RESULTS.sqlite.figures/``) first and writes the page with every figure drawn; "html, cached"
writes it again from the cache. Sides alternate over ``--repeats`` rounds (``benchmarks/sides.py``);
printed: min / median / max seconds of wall time of each. Goals (issue #26): the full HTML
report in at most 10 s, a report without figures in at most 2 s, on 2 idle cores.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sides import alternate, table

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=ROOT / "benchmarks.toml")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from bnbench.session import open_session

    manifest = open_session(args.manifest, args.profile).manifest
    if not manifest.results_path.is_file():
        sys.exit(f"no results at {manifest.results_path}: run `bnbench run {args.manifest} --profile {args.profile}`")
    cache = manifest.results_path.with_name(manifest.results_path.name + ".figures")
    report = [sys.executable, "-m", "bnbench", "report", str(args.manifest), "--profile", args.profile]

    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "report.html"

        def timed(command: list[str], fresh: bool = False):
            def measure() -> float:
                if fresh:
                    shutil.rmtree(cache, ignore_errors=True)
                started = time.perf_counter()
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                return time.perf_counter() - started

            return measure

        sides = {
            "terminal": timed(report),
            "html, drawn": timed([*report, "--html", str(page)], fresh=True),
            "html, cached": timed([*report, "--html", str(page)]),
        }
        values = alternate(sides, args.repeats, warmup=False)
        figures = page.read_text().count("<img ")
    runs = len(manifest.runs())
    print(f"bnbench report {args.manifest.name} --profile {args.profile}: {runs} runs planned, {figures} figures")
    print(table(values, "s", threads=0, floatfmt=".2f").replace("0 torch thread(s)", "each a bnbench process"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
