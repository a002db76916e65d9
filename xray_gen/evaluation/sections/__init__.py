"""The metric sections of :mod:`xray_gen.evaluate`, one module each, in the order they run.

Each section is a function ``Context -> dict`` (:mod:`.context`); a metric whose inputs are missing
is recorded as ``"skipped: reason"`` rather than left out, and :mod:`.report_page` turns the
material the sections collected into the HTML page.
"""

from xray_gen.evaluation.sections import clinical, fidelity, matched, pairs, privacy, reports

SECTIONS = (("fidelity", fidelity.fidelity), ("matched", matched.matched), ("clinical", clinical.clinical),
            ("reports", reports.reports), ("pairs", pairs.pairs), ("privacy", privacy.privacy))
