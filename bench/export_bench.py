"""Export throughput (rows/s) and peak RSS, on the worker's real export code.

Runs inside a worker container, against the stack's demo database:
    docker compose exec -T worker python - < bench/export_bench.py
Each size runs in a fresh process so its peak RSS is its own. Prints JSON.
"""

import json
import subprocess
import sys

SIZES = (100_000, 500_000, 1_000_000)
ONE_RUN = r"""
import json, os, resource, sys, time
from taskbeam import config, export, progress
settings = config.current()
params = export.export_params({"limit": int(sys.argv[1]), "format": sys.argv[2]}, settings)
started = time.perf_counter()
with progress.reporting_to(lambda *a: None, task_id="bench"):
    result = export.run_export(params, "bench", "1", settings)
elapsed = time.perf_counter() - started
os.unlink(export.export_paths(settings, "bench", "1", sys.argv[2])[0])
peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps({"rows": result["rows"], "format": sys.argv[2], "bytes": result["bytes"],
                  "seconds": round(elapsed, 3), "rows_per_s": round(result["rows"] / elapsed),
                  "peak_rss_mb": peak_rss_mb}))
"""


def main():
    runs = []
    for fmt in ("csv", "csv.gz"):
        for size in SIZES:
            out = subprocess.run(
                [sys.executable, "-c", ONE_RUN, str(size), fmt],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            runs.append(json.loads(out))
    print(json.dumps({"export": runs}))


main()
