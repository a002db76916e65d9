"""Metrics for generated radiology reports against reference reports.

``report_metrics(generated, references, labels=None)`` is the one entry point; it returns a
JSON-able dict (Python floats / ints / None, nested dicts) with

- NLG metrics over the corpus of (generated, reference) pairs: ``bleu_1`` .. ``bleu_4``,
  ``cider`` (CIDEr-D) and ``rouge_l``;
- clinical label agreement (``clinical``): the project's rule-based CheXpert-style labeler
  (:func:`xray_gen.data.labeler.label_report`) applied to generated and reference reports, with
  per-class and micro / macro precision, recall and F1 of the positive mentions plus exact label
  vector match rates; with ``labels`` given, the same against those labels (``clinical_vs_labels``,
  e.g. the labels a report was conditioned on);
- percentile-bootstrap 95% intervals (``ci``) of BLEU-4, CIDEr, ROUGE-L and the label F1s.

Libraries and conventions
-------------------------
- BLEU and CIDEr come from ``pycocoevalcap`` (the pip package of coco-caption; its BLEU and CIDEr
  scorers are pure Python). BLEU is coco-caption's corpus BLEU: n-gram counts summed over all
  pairs, clipped by the maximum count over a pair's references, uniform weights, brevity penalty
  from the summed lengths with the *closest* reference length per pair (what ``Bleu.compute_score``
  does; ``BleuScorer`` is called directly only to avoid its ``print``). A zero n-gram precision
  gives a small positive value (1e-5 or less) rather than exactly 0 (coco's tiny/small constants).
  "CIDEr" is coco-caption's ``Cider`` class, which is CIDEr-D (clipped tf-idf n-gram counts,
  n = 1..4, Gaussian length penalty sigma = 6, times 10). The idf is taken from the references of
  the evaluated corpus, so CIDEr is a corpus statistic: a corpus of one pair scores 0 by
  construction, and an n-gram present in every reference has weight 0. A generated report
  identical to its reference scores 10 if, at every n, it has an n-gram that is not in every
  reference.
- ROUGE-L is ``pycocoevalcap``'s ``Rouge`` (LCS F-measure with beta = 1.2; with several references
  the maximum precision and the maximum recall over them; averaged over pairs). Chosen over
  Google's ``rouge-score`` because (a) it is the implementation that the report-generation
  literature (R2Gen, CMN and followers, all through pycocoevalcap) reports, so numbers are
  comparable; (b) it sees exactly the same tokens as BLEU and CIDEr, whereas ``rouge-score`` has
  its own tokenizer (drops non-alphanumerics) and beta = 1; (c) it adds no dependency, while
  ``rouge-score`` pulls in ``nltk`` (plus ``regex``, ``click``, ``joblib``) for nothing else here.
  (``rouge-score==0.1.2`` installs cleanly too; it is just not needed.) The cost of
  ``pycocoevalcap==1.2``: a ~105 MB wheel (bundled Java jars and METEOR paraphrase data, unused
  here) and a dependency on ``pycocotools`` (binary wheels; installs cleanly). Only
  ``BleuScorer``, ``CiderScorer`` and ``Rouge`` are used; the rescoring on index subsets sets the
  scorers' ``ctest`` / ``crefs`` lists directly (checked against the library's own
  ``compute_score`` in the tests).
- Nothing Java-based from pycocoevalcap (PTBTokenizer, METEOR, SPICE) is used. :func:`tokenize`
  replaces coco's PTB tokenizer roughly: lower-case, split punctuation off words (decimal numbers
  like ``1.5`` and hyphenated / slashed words like ``x-ray`` stay whole; clitics ``'s`` and ``n't``
  are split off as PTB does), then drop the punctuation tokens that coco-caption drops
  (``. , ; : ? ! - -- ... ' '' ` `` " ( ) [ ] { }``). Other symbols (``%``, ``/``, ``+``) stay, as
  in coco.
- Empty generated reports are allowed: they are counted (``n_empty_generated``) and scored as
  empty (0 matching n-grams, ROUGE-L 0; they still count in the BLEU brevity penalty). Every
  pair needs at least one reference string; an empty reference scores ROUGE-L 0.

Clinical labels
---------------
Each report is labeled with the rule-based labeler (1 positive, 0 negative, -1 uncertain, NaN not
mentioned, over the 14 ``CHEXPERT_LABELS`` including "No Finding"). Several references of one
pair are joined with newlines before labeling, i.e. the labeler's own aggregation over sentences
(positive > uncertain > negative) combines them. A label counts as a *positive mention* when it is
1, or -1 when ``uncertain_as_positive`` (default True: the "U-Ones" convention of CheXpert);
0 and NaN are not positive. Per class, TP / FP / FN are counted over reports;
precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN). Undefined values
(a zero denominator) are ``None`` per class and left out of the macro means (a class with no
positive mention on either side has no F1). Micro values pool TP / FP / FN over all classes.
``exact_match`` is the share of reports whose 14 binarised positive-mention vectors are equal;
``exact_match_raw`` the share whose raw 4-valued vectors are equal (NaN equal to NaN).

Bootstrap
---------
The intervals use :func:`xray_gen.evaluation.metrics.bootstrap_ci` over the pair indices: each
resample draws pairs with replacement and recomputes corpus BLEU-4 and CIDEr-D on the resampled
corpus (CIDEr's idf included), the mean ROUGE-L and the label F1s. Tokenization, n-gram counting
and labeling are done once; a resample re-runs only the pycocoevalcap scoring on precomputed
counts. Cost: ``n_bootstrap`` + 1 CIDEr evaluations dominate (BLEU is ~100x cheaper), linear in the
number of pairs: on one CPU core about 0.5-1 ms per ~50-token pair and resample, i.e. ~10-20 s for
the default 200 resamples of 100 pairs, a few minutes for 1000 pairs; ``n_bootstrap=0`` disables
it.
"""

from __future__ import annotations

import math
import re
from typing import Sequence, Union

import numpy as np

from xray_gen.data.schema import CHEXPERT_LABELS, NUM_LABELS

__all__ = [
    "tokenize",
    "nlg_metrics",
    "label_agreement",
    "report_metrics",
]

# Numbers with decimals / thousands, words (with inner hyphens or slashes) before "n't", "n't",
# "'s", words, any other single non-space character.
_TOKEN = re.compile(
    r"\d+(?:[.,]\d+)+|\w+(?:[-/]\w+)*(?=n't\b)|n't\b|'s\b|\w+(?:[-/]\w+)*|[^\w\s]"
)
# The punctuation tokens coco-caption's PTBTokenizer drops (after PTB escaping).
_PUNCT = frozenset(
    [".", ",", ";", ":", "?", "!", "-", "--", "...", "'", "''", "`", "``", '"', "(", ")", "[", "]",
     "{", "}"]
)
_BLEU_N = 4
_CIDER_SIGMA = 6.0


def tokenize(text: str) -> list[str]:
    """Lower-cased tokens of ``text`` with coco-caption's punctuation tokens removed.

    >>> tokenize("The heart is NOT enlarged. Effusion (1.5 cm), patient's x-ray.")
    ['the', 'heart', 'is', 'not', 'enlarged', 'effusion', '1.5', 'cm', 'patient', "'s", 'x-ray']
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenize: expected a str, got {type(text).__name__}")
    return [t for t in _TOKEN.findall(text.lower()) if t not in _PUNCT]


# ------------------------------------------------------------------------------------------------
# Input checks
# ------------------------------------------------------------------------------------------------


def _check_inputs(generated, references) -> tuple[list[str], list[list[str]]]:
    if isinstance(generated, str) or not isinstance(generated, Sequence):
        raise TypeError("generated must be a list of strings (one report per item)")
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError("references must be a list of strings or a list of lists of strings")
    if len(generated) != len(references):
        raise ValueError(f"generated has {len(generated)} reports but references has "
                         f"{len(references)} entries; they must pair up one to one")
    if len(generated) == 0:
        raise ValueError("no reports to score (generated and references are empty)")
    gens = []
    for i, g in enumerate(generated):
        if g is None:
            g = ""
        if not isinstance(g, str):
            raise TypeError(f"generated[{i}] is a {type(g).__name__}, expected a str")
        gens.append(g)
    refs = []
    for i, r in enumerate(references):
        rs = [r] if isinstance(r, str) else r
        if not isinstance(rs, Sequence) or len(rs) == 0:
            raise ValueError(f"references[{i}] must be a string or a non-empty list of strings")
        for r_ in rs:
            if not isinstance(r_, str):
                raise TypeError(f"references[{i}] holds a {type(r_).__name__}, expected str")
        refs.append(list(rs))
    return gens, refs


# ------------------------------------------------------------------------------------------------
# NLG metrics (pycocoevalcap)
# ------------------------------------------------------------------------------------------------


def _require_coco():
    try:
        from pycocoevalcap.bleu.bleu_scorer import BleuScorer
        from pycocoevalcap.cider.cider_scorer import CiderScorer
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as e:  # pragma: no cover - declared dependency
        raise ImportError("report metrics need pycocoevalcap (pip install pycocoevalcap==1.2)") from e
    return BleuScorer, CiderScorer, Rouge


class _Corpus:
    """Tokenized pairs with pycocoevalcap's cooked n-gram counts, rescored on index subsets."""

    def __init__(self, generated: list[str], references: list[list[str]]):
        BleuScorer, CiderScorer, Rouge = _require_coco()
        self._bleu_cls, self._cider_cls = BleuScorer, CiderScorer
        self.hyps = [" ".join(tokenize(g)) for g in generated]
        self.refs = [[" ".join(tokenize(r)) for r in rs] for rs in references]
        bleu = BleuScorer(n=_BLEU_N)
        cider = CiderScorer(n=_BLEU_N, sigma=_CIDER_SIGMA)
        for h, rs in zip(self.hyps, self.refs):
            bleu += (h, rs)
            cider += (h, rs)
        self.bleu_test, self.bleu_refs = bleu.ctest, bleu.crefs
        self.cider_test, self.cider_refs = cider.ctest, cider.crefs
        rouge = Rouge()
        self.rouge = np.array([self._rouge_pair(rouge, h, rs) for h, rs in zip(self.hyps, self.refs)],
                              dtype=np.float64)

    @staticmethod
    def _rouge_pair(rouge, hyp: str, refs: list[str]) -> float:
        refs = [r for r in refs if r]
        if not hyp or not refs:  # "".split(" ") == [""] would match an empty reference
            return 0.0
        return float(rouge.calc_score([hyp], refs))

    def bleu(self, idx) -> list[float]:
        scorer = self._bleu_cls(n=_BLEU_N)
        scorer.ctest = [self.bleu_test[i] for i in idx]
        scorer.crefs = [self.bleu_refs[i] for i in idx]
        score, _ = scorer.compute_score(option="closest", verbose=0)
        return [float(s) for s in score]

    def cider(self, idx) -> float:
        crefs = [self.cider_refs[i] for i in idx]
        if not any(len(c) for refs in crefs for c in refs):
            return 0.0  # no reference n-gram at all: pycocoevalcap would fail on max() of nothing
        scorer = self._cider_cls(n=_BLEU_N, sigma=_CIDER_SIGMA)
        scorer.ctest = [self.cider_test[i] for i in idx]
        scorer.crefs = crefs
        score, _ = scorer.compute_score()
        return float(score)

    def rouge_l(self, idx) -> float:
        return float(np.mean(self.rouge[np.asarray(idx)]))


def nlg_metrics(generated: list[str], references: Union[list[str], list[list[str]]]) -> dict:
    """``{"bleu_1".."bleu_4", "cider", "rouge_l"}`` of the corpus of pairs (see the module doc)."""
    gens, refs = _check_inputs(generated, references)
    corpus = _Corpus(gens, refs)
    idx = np.arange(len(gens))
    out = {f"bleu_{k + 1}": v for k, v in enumerate(corpus.bleu(idx))}
    out["cider"] = corpus.cider(idx)
    out["rouge_l"] = corpus.rouge_l(idx)
    return out


# ------------------------------------------------------------------------------------------------
# Clinical label agreement
# ------------------------------------------------------------------------------------------------


def _check_labels(labels, n: int, name: str) -> np.ndarray:
    arr = np.asarray(labels, dtype=np.float64)
    if arr.ndim == 1 and n == 1:
        arr = arr[None]
    if arr.shape != (n, NUM_LABELS):
        raise ValueError(f"{name} must have shape ({n}, {NUM_LABELS}) (reports x CheXpert labels "
                         f"in CHEXPERT_LABELS order), got {arr.shape}")
    finite = arr[~np.isnan(arr)]
    bad = ~np.isin(finite, (1.0, 0.0, -1.0))
    if bad.any():
        raise ValueError(f"{name} values must be 1 (positive), 0 (negative), -1 (uncertain) or NaN "
                         f"(not mentioned); found {np.unique(finite[bad])[:5].tolist()}")
    return arr


def _positive(labels: np.ndarray, uncertain_as_positive: bool) -> np.ndarray:
    pos = labels == 1.0
    if uncertain_as_positive:
        pos |= labels == -1.0
    return pos


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def _f1_counts(pred: np.ndarray, true: np.ndarray):
    """Per-class TP, FP, FN of boolean (n, C) arrays."""
    tp = np.sum(pred & true, axis=0)
    fp = np.sum(pred & ~true, axis=0)
    fn = np.sum(~pred & true, axis=0)
    return tp, fp, fn


def _f1_summary(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(micro F1, macro F1) with NaN for undefined; the bootstrap statistic."""
    tp, fp, fn = _f1_counts(pred, true)
    micro = _ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())
    per = [_ratio(2 * a, 2 * a + b + c) for a, b, c in zip(tp, fp, fn)]
    per = [v for v in per if not math.isnan(v)]
    return micro, (float(np.mean(per)) if per else float("nan"))


def _none_if_nan(x: float):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _label_agreement_arrays(gen: np.ndarray, ref: np.ndarray, uncertain_as_positive: bool) -> dict:
    pred = _positive(gen, uncertain_as_positive)
    true = _positive(ref, uncertain_as_positive)
    tp, fp, fn = _f1_counts(pred, true)
    per_class = {}
    ps, rs, fs = [], [], []
    for c, name in enumerate(CHEXPERT_LABELS):
        p = _ratio(tp[c], tp[c] + fp[c])
        r = _ratio(tp[c], tp[c] + fn[c])
        f = _ratio(2 * tp[c], 2 * tp[c] + fp[c] + fn[c])
        ps.append(p)
        rs.append(r)
        fs.append(f)
        per_class[name] = {"precision": _none_if_nan(p), "recall": _none_if_nan(r), "f1": _none_if_nan(f),
                           "support": int(tp[c] + fn[c]), "predicted": int(tp[c] + fp[c])}

    def mean_defined(values):
        v = [x for x in values if not math.isnan(x)]
        return float(np.mean(v)) if v else None

    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    raw_equal = (gen == ref) | (np.isnan(gen) & np.isnan(ref))
    return {
        "uncertain_as_positive": bool(uncertain_as_positive),
        "micro": {"precision": _none_if_nan(_ratio(TP, TP + FP)), "recall": _none_if_nan(_ratio(TP, TP + FN)),
                  "f1": _none_if_nan(_ratio(2 * TP, 2 * TP + FP + FN))},
        "macro": {"precision": mean_defined(ps), "recall": mean_defined(rs), "f1": mean_defined(fs)},
        "per_class": per_class,
        "exact_match": float(np.mean(np.all(pred == true, axis=1))),
        "exact_match_raw": float(np.mean(np.all(raw_equal, axis=1))),
    }


def _reference_labels(references: list[list[str]]) -> np.ndarray:
    from xray_gen.data.labeler import label_report

    return np.stack([label_report("\n".join(rs)) for rs in references]).astype(np.float64)


def _generated_labels(generated: list[str]) -> np.ndarray:
    from xray_gen.data.labeler import label_report

    return np.stack([label_report(g) for g in generated]).astype(np.float64)


def label_agreement(generated, reference, uncertain_as_positive: bool = True) -> dict:
    """Clinical agreement of generated reports with references or with labels.

    ``generated`` and ``reference`` are each either a list of report strings (labeled with
    :func:`xray_gen.data.labeler.label_report`; a reference item may be a list of strings, joined
    before labeling) or an ``(n, 14)`` array of CheXpert-style labels (1 / 0 / -1 / NaN, columns
    in ``CHEXPERT_LABELS`` order). Returns micro / macro / per-class precision, recall, F1 of the
    positive mentions (uncertain positive when ``uncertain_as_positive``, the U-Ones default) and
    the exact-match rates; undefined values are None (see the module doc).
    """
    gen = _as_labels(generated, "generated")
    ref = _as_labels(reference, "reference")
    if gen.shape[0] != ref.shape[0]:
        raise ValueError(f"generated has {gen.shape[0]} items but reference has {ref.shape[0]}")
    if gen.shape[0] == 0:
        raise ValueError("no reports to score")
    return _label_agreement_arrays(gen, ref, uncertain_as_positive)


def _as_labels(x, name: str) -> np.ndarray:
    """Labels of a list of reports (or of lists of reports), or a checked (n, 14) label array."""
    if isinstance(x, str) or not isinstance(x, (Sequence, np.ndarray)):
        raise TypeError(f"{name}: expected a list of reports or an (n, {NUM_LABELS}) label array")
    if len(x) == 0:
        return np.zeros((0, NUM_LABELS))
    first = x[0]
    if isinstance(first, str) or (isinstance(first, (list, tuple)) and first and isinstance(first[0], str)):
        items = []
        for i, r in enumerate(x):
            rs = [r] if isinstance(r, str) else list(r)
            if not rs or not all(isinstance(s, str) for s in rs):
                raise TypeError(f"{name}[{i}]: expected a str or a non-empty list of str")
            items.append(rs)
        return _reference_labels(items)
    arr = np.asarray(x, dtype=np.float64)
    return _check_labels(arr, arr.shape[0], name)


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------


def report_metrics(generated: list[str], references: Union[list[str], list[list[str]]],
                   labels=None, *, uncertain_as_positive: bool = True, n_bootstrap: int = 200,
                   seed: int = 0, alpha: float = 0.05) -> dict:
    """All report metrics of ``generated`` against ``references`` (one or several per report).

    ``labels``: optional ``(n, 14)`` CheXpert-style labels (1 / 0 / -1 / NaN, ``CHEXPERT_LABELS``
    order) to compare the generated reports' labels with, e.g. the labels they were conditioned on
    (``clinical_vs_labels``). ``n_bootstrap`` resamples of the pairs give the ``1 - alpha``
    percentile intervals in ``ci`` (0 disables them; cost in the module doc).

    Returns a JSON-able dict::

        {"n_reports", "n_empty_generated", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider",
         "rouge_l", "clinical": {...}, ["clinical_vs_labels": {...},]
         "ci": {"n_bootstrap", "alpha", "bleu_4": [lo, hi], "cider": [...], "rouge_l": [...],
                "clinical_micro_f1": [...], "clinical_macro_f1": [...],
                ["clinical_vs_labels_micro_f1": [...], "clinical_vs_labels_macro_f1": [...]]}}

    Mismatched lengths, an empty corpus, non-string reports, malformed labels raise ValueError /
    TypeError naming the problem.
    """
    gens, refs = _check_inputs(generated, references)
    n = len(gens)
    cond = None if labels is None else _check_labels(labels, n, "labels")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")

    corpus = _Corpus(gens, refs)
    gen_labels = _generated_labels(gens)
    ref_labels = _reference_labels(refs)
    idx_all = np.arange(n)

    out: dict = {"n_reports": n, "n_empty_generated": int(sum(1 for h in corpus.hyps if not h))}
    out.update({f"bleu_{k + 1}": v for k, v in enumerate(corpus.bleu(idx_all))})
    out["cider"] = corpus.cider(idx_all)
    out["rouge_l"] = corpus.rouge_l(idx_all)
    out["clinical"] = _label_agreement_arrays(gen_labels, ref_labels, uncertain_as_positive)
    if cond is not None:
        out["clinical_vs_labels"] = _label_agreement_arrays(gen_labels, cond, uncertain_as_positive)

    if n_bootstrap:
        from xray_gen.evaluation.metrics import bootstrap_ci

        pred = _positive(gen_labels, uncertain_as_positive)
        true = _positive(ref_labels, uncertain_as_positive)
        true_cond = None if cond is None else _positive(cond, uncertain_as_positive)

        def stats(idx):
            s = {"bleu_4": corpus.bleu(idx)[3], "cider": corpus.cider(idx), "rouge_l": corpus.rouge_l(idx)}
            s["clinical_micro_f1"], s["clinical_macro_f1"] = _f1_summary(pred[idx], true[idx])
            if true_cond is not None:
                s["clinical_vs_labels_micro_f1"], s["clinical_vs_labels_macro_f1"] = \
                    _f1_summary(pred[idx], true_cond[idx])
            return s

        cis = bootstrap_ci(stats, idx_all, n=n_bootstrap, seed=seed, alpha=alpha)
        out["ci"] = {"n_bootstrap": int(n_bootstrap), "alpha": float(alpha)}
        out["ci"].update({k: [_none_if_nan(lo), _none_if_nan(hi)] for k, (_, lo, hi) in cis.items()})
    return out
