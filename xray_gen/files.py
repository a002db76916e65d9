"""Atomic file writes: a reader (or a resumed run) never sees a half-written result file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

from absl import logging


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", suffix: str = ".tmp"):
    """Open a temporary file beside `path`; on success rename it over `path`, on error delete it.

    The result gets the permissions a plain `open` would give (mkstemp's are 0600), so results
    written for sharing are readable by others as usual.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=suffix)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def merge_json_summary(path: str, summary: dict) -> None:
    """Writes `summary` into the JSON object at `path`, keeping earlier calls' entries (this call's
    replace those with the same keys); an unreadable file is rewritten with this call's only."""
    previous = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            logging.warning("%s was unreadable: rewritten with this call's entries only", path)
        previous = previous if isinstance(previous, dict) else {}
    with atomic_open(path) as f:
        json.dump({**previous, **summary}, f, indent=2)
