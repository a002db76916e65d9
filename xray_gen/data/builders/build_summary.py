"""Skip-and-count bookkeeping of a build, written as `build_summary.json` and logged.

Every study or file that is not used is counted under a reason with the first offending file
names. Separate because every part of a build (file parsing, image reading, the TFDS builder)
reports into it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from absl import logging

from xray_gen.data.builders.splits import SPLITS

SUMMARY_FILE = "build_summary.json"
_MAX_EXAMPLES_PER_REASON = 5


class BuildSummary:
    """Counts used and skipped studies/files, with reasons and the first offending file names."""

    def __init__(self, dataset: str, config: str):
        self.dataset = dataset
        self.config = config
        self.used: dict[str, int] = {s: 0 for s in SPLITS}
        self.candidates: dict[str, int] = {s: 0 for s in SPLITS}
        self._skipped: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []

    def skip(self, reason: str, item: str) -> None:
        entry = self._skipped.setdefault(reason, {"count": 0, "first": []})
        entry["count"] += 1
        if len(entry["first"]) < _MAX_EXAMPLES_PER_REASON:
            entry["first"].append(str(item))

    def use(self, split: str) -> None:
        self.used[split] += 1

    def note(self, text: str) -> None:
        logging.info("%s: %s", self.dataset, text)
        self.notes.append(text)

    @property
    def skipped(self) -> dict[str, dict[str, Any]]:
        return self._skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "config": self.config,
            "used": dict(self.used),
            "used_total": sum(self.used.values()),
            "skipped": {k: dict(v) for k, v in sorted(self._skipped.items())},
            "skipped_total": sum(v["count"] for v in self._skipped.values()),
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        parts = [f"used {self.used}"]
        for reason, v in sorted(self._skipped.items()):
            parts.append(f"skipped {v['count']} ({reason}; first: {', '.join(v['first'])})")
        return "; ".join(parts)

    def log(self) -> None:
        logging.info("%s/%s build summary: %s", self.dataset, self.config, self.describe())
        for reason, v in sorted(self._skipped.items()):
            logging.warning(
                "%s: skipped %d item(s): %s (first: %s)", self.dataset, v["count"], reason,
                ", ".join(v["first"]),
            )

    def write(self, directory: str | os.PathLike) -> None:
        path = Path(directory) / SUMMARY_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
