"""Memorisation / privacy checks of generated reports against the whole training set.

Text only, and sharing nothing with the image searches but the closest-pairs and quantile
summaries of :mod:`xray_gen.evaluation.near_copies`:

- nearest training report by the Jaccard index of the sets of word 4-grams (``n``; words are
  lower-cased ``[a-z0-9]`` runs, punctuation dropped; a report shorter than ``n`` words is one
  gram), computed with sparse matrix products over chunks of the streamed training reports;
- verbatim-copy rate: the generated report equals a training report after lower-casing and
  collapsing whitespace;
- copied-sentence rate: sentences (:func:`xray_gen.data.reports.split_sentences`, then
  :func:`normalise_sentence`: lower-cased, whitespace collapsed, final ``.!?`` dropped) of
  generated reports that occur verbatim in a training report. Radiology boilerplate ("no
  pneumothorax.") is copied by any model, so the same rates for real held-out reports are
  reported as the baseline;
- de-identification placeholder leaks per report (:data:`PLACEHOLDER_PATTERNS`: Open-i ``XXXX``,
  MIMIC-CXR ``___``, MIMIC-III ``[**...**]``), also counted in the training and reference reports.

:func:`report_privacy` returns a JSON-able dict, with the closest (generated, training) pairs
(top-k) for side-by-side display.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from xray_gen.data import reports
from xray_gen.evaluation.metrics import bootstrap_ci
from xray_gen.evaluation.near_copies import closest_pairs, quantile_summary

__all__ = [
    "normalise_report",
    "normalise_sentence",
    "normalised_sentences",
    "word_ngrams",
    "placeholder_counts",
    "PLACEHOLDER_PATTERNS",
    "report_privacy",
]

#: De-identification placeholders: Open-i "XXXX", MIMIC-CXR "___", MIMIC-III "[**Name**]".
PLACEHOLDER_PATTERNS: Dict[str, str] = {
    "xxxx": r"(?<![A-Za-z])[Xx]{3,}(?![A-Za-z])",
    "underscores": r"_{2,}",
    "mimic_brackets": r"\[\*\*.*?\*\*\]",
}

_WS = re.compile(r"\s+")
_WORD = re.compile(r"[a-z0-9]+")


def normalise_report(text: str) -> str:
    """Lower-case, whitespace runs collapsed to one space, stripped."""
    return _WS.sub(" ", str(text)).strip().lower()


def normalise_sentence(sentence: str) -> str:
    """`normalise_report` with the final .!? dropped, so "No effusion." and "no  effusion" match."""
    return normalise_report(sentence).rstrip(".!? ").strip()


def normalised_sentences(text: str) -> List[str]:
    """The shared splitter's sentences of ``text``, normalised for verbatim comparison."""
    return [n for n in (normalise_sentence(s) for s in reports.split_sentences(str(text))) if n]


def word_ngrams(text: str, n: int = 4) -> frozenset:
    """Set of word n-grams (lower-cased [a-z0-9] runs); a shorter non-empty text is one gram."""
    words = _WORD.findall(str(text).lower())
    if not words:
        return frozenset()
    if len(words) < n:
        return frozenset([tuple(words)])
    return frozenset(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def placeholder_counts(text: str, patterns: Optional[Mapping[str, str]] = None) -> Dict[str, int]:
    """Occurrences of each de-identification placeholder pattern in ``text``."""
    patterns = PLACEHOLDER_PATTERNS if patterns is None else patterns
    return {name: len(re.findall(p, str(text))) for name, p in patterns.items()}


def _iter_texts(data, key: Optional[str]) -> Iterator[str]:
    for item in data:
        if isinstance(item, Mapping):
            item = item[key]
        if isinstance(item, (str, bytes)):
            item = [item]
        for t in np.asarray(item, dtype=object).reshape(-1):
            yield t.decode() if isinstance(t, bytes) else str(t)


def _leak_summary(texts: Sequence[str], patterns) -> Dict[str, Any]:
    counts = [placeholder_counts(t, patterns) for t in texts]
    per_report = np.array([sum(c.values()) for c in counts], np.float64)
    return {
        "mean_per_report": float(per_report.mean()) if len(texts) else float("nan"),
        "rate_reports_with_leak": float(np.mean(per_report > 0)) if len(texts) else float("nan"),
        "total": {k: int(sum(c[k] for c in counts)) for k in patterns},
        "per_report": [int(x) for x in per_report],
    }


def report_privacy(generated_reports: Sequence[str], train_reports,
                   reference_reports: Optional[Sequence[str]] = None,
                   *, key: Optional[str] = "report", n: int = 4, top_k: int = 16, train_chunk: int = 2048,
                   patterns: Optional[Mapping[str, str]] = None, n_boot: int = 1000, seed: int = 0,
                   alpha: float = 0.05) -> Dict[str, Any]:
    """Memorisation report for generated reports; JSON-able (module docstring for the definitions).

    ``train_reports``: an iterable of strings, of lists/arrays of strings, or of dicts (``key``),
    read once. ``reference_reports`` (real held-out reports) get the same statistics as a baseline.
    Returns ``{"generated": {...}, "reference": {...}?, "train_leaks": {...}, "closest_pairs": [...]}``.
    """
    import scipy.sparse as sp

    patterns = PLACEHOLDER_PATTERNS if patterns is None else dict(patterns)
    gen = [str(t) for t in generated_reports]
    ref = [str(t) for t in reference_reports] if reference_reports is not None else []
    queries = gen + ref
    nq = len(queries)
    if not gen:
        raise ValueError("report_privacy: no generated reports")

    # Query-side indices: normalised text -> queries, sentence -> (query, slot), n-gram vocabulary.
    text_to_q: Dict[str, List[int]] = {}
    for i, t in enumerate(queries):
        text_to_q.setdefault(normalise_report(t), []).append(i)
    sents = [normalised_sentences(t) for t in queries]
    sent_to_slots: Dict[str, List[Tuple[int, int]]] = {}
    for i, ss in enumerate(sents):
        for j, s in enumerate(ss):
            sent_to_slots.setdefault(s, []).append((i, j))
    copied_sent = [np.zeros(len(ss), bool) for ss in sents]
    verbatim = np.zeros(nq, bool)
    verbatim_idx = np.full(nq, -1, np.int64)

    vocab: Dict[tuple, int] = {}
    rows, cols = [], []
    q_len = np.zeros(nq, np.float64)
    for i, t in enumerate(queries):
        grams = word_ngrams(t, n)
        q_len[i] = len(grams)
        for g in grams:
            rows.append(i)
            cols.append(vocab.setdefault(g, len(vocab)))
    V = max(len(vocab), 1)
    Q = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(nq, V))
    best = np.zeros(nq, np.float64)
    best_idx = np.full(nq, -1, np.int64)

    train_counts = {k: 0 for k in patterns}
    train_leaky = 0
    seen = 0

    def flush(chunk: List[str], start: int):
        t_rows, t_cols, t_len = [], [], np.zeros(len(chunk), np.float64)
        for r, t in enumerate(chunk):
            grams = word_ngrams(t, n)
            t_len[r] = len(grams)
            for g in grams:
                c = vocab.get(g)
                if c is not None:
                    t_rows.append(r)
                    t_cols.append(c)
        T = sp.csr_matrix((np.ones(len(t_rows), np.float32), (t_rows, t_cols)), shape=(len(chunk), V))
        inter = (Q @ T.T).tocoo()
        if inter.nnz == 0:
            return
        qi, tj, c = inter.row, inter.col, inter.data.astype(np.float64)
        jac = c / (q_len[qi] + t_len[tj] - c)
        order = np.lexsort((tj, -jac, qi))  # per query: highest Jaccard, then earliest training row
        qi, tj, jac = qi[order], tj[order], jac[order]
        first = np.ones(qi.size, bool)
        first[1:] = qi[1:] != qi[:-1]
        qi, tj, jac = qi[first], tj[first], jac[first]
        better = jac > best[qi]
        best[qi[better]] = jac[better]
        best_idx[qi[better]] = tj[better] + start

    chunk: List[str] = []
    for t in _iter_texts(train_reports, key):
        for i in text_to_q.get(normalise_report(t), ()):
            if not verbatim[i]:
                verbatim[i], verbatim_idx[i] = True, seen
        for s in set(normalised_sentences(t)):
            for i, j in sent_to_slots.get(s, ()):
                copied_sent[i][j] = True
        c = placeholder_counts(t, patterns)
        for k in c:
            train_counts[k] += c[k]
        train_leaky += any(c.values())
        chunk.append(t)
        seen += 1
        if len(chunk) == train_chunk:
            flush(chunk, seen - len(chunk))
            chunk = []
    if chunk:
        flush(chunk, seen - len(chunk))
    if seen == 0:
        raise ValueError("report_privacy: the training reports were empty (an exhausted iterator?)")

    def summary(lo: int, hi: int, texts: Sequence[str]) -> Dict[str, Any]:
        v = verbatim[lo:hi].astype(np.float64)
        n_copied = np.array([copied_sent[i].sum() for i in range(lo, hi)], np.float64)
        n_sent = np.array([copied_sent[i].size for i in range(lo, hi)], np.float64)
        vr = bootstrap_ci(lambda x: float(np.mean(x)), v, n=n_boot, seed=seed, alpha=alpha)
        sr = bootstrap_ci(lambda a, b: float(a.sum() / b.sum()) if b.sum() else float("nan"),
                          n_copied, n_sent, n=n_boot, seed=seed, alpha=alpha)
        jac = best[lo:hi]
        return {
            "n": hi - lo,
            "verbatim_rate": vr[0], "verbatim_rate_ci": [vr[1], vr[2]],
            "verbatim_count": int(v.sum()),
            "copied_sentence_rate": sr[0], "copied_sentence_rate_ci": [sr[1], sr[2]],
            "copied_sentences": int(n_copied.sum()), "sentences": int(n_sent.sum()),
            "nearest_jaccard": quantile_summary(jac),
            "placeholder_leaks": _leak_summary(texts, patterns),
        }

    out: Dict[str, Any] = {
        "ngram": n,
        "n_train": seen,
        "generated": summary(0, len(gen), gen),
        "train_leaks": {"total": train_counts,
                        "rate_reports_with_leak": train_leaky / seen},
    }
    out["generated"]["verbatim_pairs"] = [{"generated": int(i), "train": int(verbatim_idx[i])}
                                          for i in np.flatnonzero(verbatim[:len(gen)])[:top_k]]
    if ref:
        out["reference"] = summary(len(gen), nq, ref)
    out["closest_pairs"] = closest_pairs(best[:len(gen)], best_idx[:len(gen)], top_k, largest=True,
                                         name="jaccard")
    return out
