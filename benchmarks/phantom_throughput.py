"""Studies/s of the procedural phantom (frontal + lateral + report + labels per study).

  python benchmarks/phantom_throughput.py                       # 128 and 256 px, 1 and 2 processes
  python benchmarks/phantom_throughput.py --resolutions=256 --processes=1 --studies=50
  python benchmarks/phantom_throughput.py --quick               # tiny run

Besides wall-clock rates, each row records the CPU time per study and the rate that `processes`
otherwise idle cores would give (`cpu_bound_studies_per_s`), because the wall-clock numbers on a
shared machine depend on what else runs. Single-process rates time `Phantom.study` in this process after a short warm-up. Multi-process
rates use a `multiprocessing` pool whose workers each generate a contiguous range of indices;
pool start-up is excluded (the pool is warmed with one study per worker first). Writes JSON to
`--out` (default `benchmarks/results/phantom_throughput.json`).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

try:  # run as a script or imported as `benchmarks.phantom_throughput`
    from benchmarks import common
except ImportError:  # pragma: no cover
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # type: ignore

from xray_gen.data.phantom import Phantom


def _generate(job):
    resolution, start, count = job
    ph = Phantom(resolution=resolution, seed=0, deid_rate=0.1)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(start, start + count):
        ph.study(i, "train")
    return time.perf_counter() - t0, time.process_time() - c0


def measure(resolution: int, studies: int, processes: int) -> dict:
    if processes == 1:
        _generate((resolution, 10_000, 3))  # warm-up (imports, projector caches)
        t0 = time.perf_counter()
        _, cpu = _generate((resolution, 0, studies))
        wall = time.perf_counter() - t0
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(processes) as pool:
            pool.map(_generate, [(resolution, 10_000 + k, 1) for k in range(processes)])
            per = -(-studies // processes)
            jobs = [(resolution, k * per, per) for k in range(processes)]
            t0 = time.perf_counter()
            cpu = sum(c for _, c in pool.map(_generate, jobs, chunksize=1))
            wall = time.perf_counter() - t0
            studies = per * processes
    return {"resolution": resolution, "processes": processes, "studies": studies,
            "seconds": round(wall, 3), "studies_per_s": round(studies / wall, 2),
            "ms_per_study": round(1000 * wall / studies, 2),
            # CPU time actually spent per study: on a shared, oversubscribed machine the wall-clock
            # rate understates what `processes` idle cores deliver (about processes * 1000 / cpu_ms).
            "cpu_ms_per_study": round(1000 * cpu / studies, 2),
            "cpu_bound_studies_per_s": round(processes * studies / cpu, 2)}


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", default="128,256")
    ap.add_argument("--processes", default="1,2")
    ap.add_argument("--studies", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="64 px, 1 process, 5 studies")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/phantom_throughput.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.resolutions, args.processes, args.studies = "64", "1", 5
    rows = [measure(r, args.studies, p) for r in common.parse_csv_ints(args.resolutions)
            for p in common.parse_csv_ints(args.processes)]
    common.print_table(rows, title="phantom studies/s (frontal + lateral + report)")
    path = common.write_result("phantom_throughput", rows, vars(args), out=args.out,
                               extra={"target_studies_per_s_256px_2cores": 50,
                                      "load_average_1min_at_end": os.getloadavg()[0]})
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
