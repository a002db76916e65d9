"""Batches/s and studies/s of the grain training pipeline over the phantom.

  python benchmarks/pipeline_throughput.py                          # 64/128/256 px x 0/1/2 workers
  python benchmarks/pipeline_throughput.py --resolutions=64 --workers=0,2 --batches=20
  python benchmarks/pipeline_throughput.py --quick                  # tiny run (the tests)

Each setting builds the task's own `train_loader()` (`make_loader` over `PhantomSource` with the
task's `ToModelInputs`: the classifier's frontal-only transform or the VCN's frontal+lateral one)
from its config with `data.resolution`, `data.worker_count` and `train.batch_size` overridden, so
it measures exactly what training reads: phantom generation of each study (both views and the
report are always drawn), the transform, and batching, in this process (`worker_count=0`) or in
grain worker processes. Start-up (the first `--warmup` batches, which include spawning workers)
is timed separately and excluded from the rate. Workers fill their buffers while the first batch
is awaited; consuming several warm-up batches back to back drains that head start, so keep
`--warmup` at least a few batches when `worker_count > 0` or worker rates come out optimistic.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

try:  # run as `python benchmarks/pipeline_throughput.py` or imported as `benchmarks.pipeline_throughput`
    from benchmarks import common
except ImportError:  # pragma: no cover
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # type: ignore

TRANSFORMS = ("classifier", "vcn")


def _ensure_absl_flags_parsed():
    """grain's worker processes read absl flags; scripts run outside absl.app must mark them parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _close(iterator) -> None:
    """Stops a grain iterator's prefetch threads/worker processes now rather than at garbage collection."""
    inner = getattr(iterator, "_iterator", None)
    for it in (inner, iterator):
        close = getattr(it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # best effort: some iterator types do not implement it
                pass


def make_task(kind: str, variant: str, resolution: int, workers: int, batch: int, size: int):
    from xray_gen.configs.classifier import get_config as classifier_config
    from xray_gen.configs.vcn import get_config as vcn_config

    if kind == "classifier":
        from xray_gen.models.classifier.task import ClassifierTask as Task

        config = classifier_config(variant)
    elif kind == "vcn":
        from xray_gen.models.vcn.task import VCNTask as Task

        config = vcn_config(variant)
    else:
        raise ValueError(f"unknown transform {kind!r}; valid: {', '.join(TRANSFORMS)}")
    config.data.source = "phantom"
    config.data.resolution = resolution
    config.data.worker_count = workers
    config.train.batch_size = batch
    if size:
        config.data.phantom.train_size = size
    return Task(config)


def bench_one(kind: str, resolution: int, workers: int, args) -> dict:
    task = make_task(kind, args.variant, resolution, workers, args.batch_size, args.size)
    t0 = time.perf_counter()
    loader = task.train_loader()
    iterator = iter(loader)
    try:
        batch = None
        for _ in range(max(1, args.warmup)):
            batch = next(iterator)
        startup_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(args.batches):
            batch = next(iterator)
        seconds = time.perf_counter() - t1
    finally:
        _close(iterator)
    views = len(task.transform().views)
    n = next(iter(batch.values())).shape[0]
    batch_mb = sum(v.nbytes for v in batch.values()) / 2**20
    return {
        "transform": kind,
        "views": views,
        "resolution": resolution,
        "workers": workers,
        "batch": n,
        "batches": args.batches,
        "startup_s": startup_s,
        "seconds": seconds,
        "batches_per_s": common.rate(args.batches, seconds),
        "studies_per_s": common.rate(args.batches * n, seconds),
        "images_per_s": common.rate(args.batches * n * views, seconds),
        "ms_per_study": 1e3 * seconds / (args.batches * n),
        "batch_mb": batch_mb,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--transforms", default=",".join(TRANSFORMS), help="classifier (frontal) and/or vcn (frontal+lateral)")
    p.add_argument("--resolutions", default="64,128,256")
    p.add_argument("--workers", default="0,1,2", help="grain worker_count values")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--batches", type=int, default=8, help="timed batches per setting")
    p.add_argument("--warmup", type=int, default=4,
                   help="untimed batches first (start-up, worker spawn, and draining what workers buffered meanwhile)")
    p.add_argument("--size", type=int, default=100_000, help="phantom train split size (random access; no epoch wraps)")
    p.add_argument("--variant", default="cpu", help="config variant the tasks start from (only data settings matter)")
    p.add_argument("--quick", action="store_true", help="32 px, in-process, batch 8, 1+2 batches (tests)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/pipeline_throughput.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.resolutions, args.workers, args.batch_size, args.batches, args.warmup = "32", "0", 8, 2, 1
        args.variant, args.size = "smoke", 1_000
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    _ensure_absl_flags_parsed()
    rows = []
    for kind in common.parse_csv(args.transforms):
        for res in common.parse_csv_ints(args.resolutions):
            for workers in common.parse_csv_ints(args.workers):
                row = bench_one(kind, res, workers, args)
                rows.append(row)
                print(f"{kind:10s} {res:4d}px workers={workers}: {row['batches_per_s']:.3f} batches/s, "
                      f"{row['studies_per_s']:.1f} studies/s (start-up {row['startup_s']:.1f} s)", flush=True)
    columns = ["transform", "resolution", "workers", "batch", "batches_per_s", "studies_per_s", "images_per_s",
               "ms_per_study", "startup_s"]
    common.print_table(rows, columns, title="grain pipeline over the phantom")
    path = common.write_result("pipeline_throughput", rows, vars(args), out=args.out)
    print(f"\nwrote {os.path.relpath(path)}")
    return path


if __name__ == "__main__":
    main()
