"""Run every benchmark in this folder (`make bench`). Each prints its own ratios against a baseline measured in the
same run; nothing here asserts a time."""

import runpy
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
for script in sorted(here.glob("bench_*.py")):
    print(f"\n=== {script.name}", flush=True)
    runpy.run_path(str(script), run_name="__main__")
sys.exit(0)
