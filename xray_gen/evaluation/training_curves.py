"""Scalar training curves read back from a workdir's TensorBoard event files.

:func:`read_curves` gives ``{tag: [(step, value), ...]}``; the HTML report plots them
(:mod:`xray_gen.evaluation.html_report`), and tests read a run's logged metrics with it. Separate
from the report because reading event files needs TensorBoard and nothing of the page.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["read_curves"]


def _event_dirs(workdir: str) -> List[str]:
    out = []
    for root, dirs, files in os.walk(workdir):
        dirs.sort()
        if any("tfevents" in f for f in files):
            out.append(root)
    return out


def _tag_wanted(tag: str, tags: Optional[Sequence[str]]) -> bool:
    return tags is None or any(tag == t or fnmatch.fnmatchcase(tag, t) for t in tags)


def read_curves(workdir: str, tags: Optional[Union[str, Iterable[str]]] = None) -> Dict[str, List[Tuple[int, float]]]:
    """Scalar curves ``{tag: [(step, value), ...]}`` (sorted by step) from a workdir's event files.

    Reads clu's tensor-summary scalars (``metric_writers.create_default_writer``) and old-style
    simple values, from ``workdir`` and its subdirectories (tags from ``workdir/sub`` are named
    ``sub/tag``). A step written twice (a resumed run) keeps the last value. ``tags``: names or
    glob patterns (``"train/*"``) to keep; ``None`` keeps all. An existing workdir without event
    files gives ``{}``.
    """
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"read_curves: no such directory {workdir!r}")
    if isinstance(tags, str):
        tags = [tags]
    elif tags is not None:
        tags = list(tags)
    curves: Dict[str, Dict[int, float]] = {}
    for directory in _event_dirs(workdir):
        rel = os.path.relpath(directory, workdir)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        acc = ea.EventAccumulator(directory, size_guidance={ea.TENSORS: 0, ea.SCALARS: 0},
                                  purge_orphaned_data=False)
        acc.Reload()
        available = acc.Tags()
        for tag in available.get(ea.TENSORS, []):
            name = prefix + tag
            if not _tag_wanted(name, tags):
                continue
            plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
            if plugin not in ("scalars", ""):
                continue
            points = {}
            for event in acc.Tensors(tag):
                arr = tensor_util.make_ndarray(event.tensor_proto)
                if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
                    points = None
                    break
                points[int(event.step)] = float(arr.reshape(()))
            if points:
                curves.setdefault(name, {}).update(points)
        for tag in available.get(ea.SCALARS, []):
            name = prefix + tag
            if _tag_wanted(name, tags):
                curves.setdefault(name, {}).update({int(e.step): float(e.value) for e in acc.Scalars(tag)})
    return {name: sorted(points.items()) for name, points in sorted(curves.items())}
