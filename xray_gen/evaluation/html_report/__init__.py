"""One self-contained HTML file per evaluation.

:func:`write_html_report` renders an evaluation result (as written by
:func:`xray_gen.evaluation.protocol.write_result_json`) together with optional sample grids,
closest generated/training pairs, histograms, per-class bar plots and training curves into a
single HTML file that needs nothing else: images are base64 PNG data URIs, plots are made with
matplotlib (Agg, no pyplot state) and embedded the same way, the CSS is inline, and there is no
script. All text (metric names, captions, reports, ids, ...) is HTML-escaped, so a hostile
report cannot inject markup. A section without data says "not computed".

Metric formatting: nested metric dicts are flattened into dotted names grouped by their top-level
key; a list of 3 numbers is ``(point, lower, upper)`` -> ``0.912 [0.901, 0.925]``; a list of
2 numbers is ``(mean, std)`` -> ``1.23 ± 0.04`` (unless its key ends in ``ci``: then it is an
interval ``[lo, hi]``); ``None`` -> ``–``. A dict of per-class values (a dict whose values are
dicts sharing the same keys, or a ``per_*``/``by_*`` dict of plain values) and a list of records
(dicts) become their own small tables.

:func:`read_curves` reads the scalar curves a training workdir's TensorBoard event files hold
(clu's metric writers write tensor summaries; old-style simple values are read too); it lives in
:mod:`xray_gen.evaluation.training_curves` and is re-exported here.

Layout: :mod:`.page` assembles the sections and writes the file, :mod:`.tables` turns metric dicts
into tables, :mod:`.figures` draws images and plots, :mod:`.values` formats single values.
"""

from xray_gen.evaluation.html_report.figures import image_data_uri
from xray_gen.evaluation.html_report.page import render_html, write_html_report
from xray_gen.evaluation.html_report.values import format_value
from xray_gen.evaluation.training_curves import read_curves

__all__ = ["write_html_report", "render_html", "read_curves", "format_value", "image_data_uri"]
