"""A rule-based CheXpert-style report labeler (mention -> negation / uncertainty -> aggregation).

`label_report(text)` returns a float32 (14,) vector over `CHEXPERT_LABELS` with 1 positive,
0 negative, -1 uncertain, NaN not mentioned; `label_sentence(sentence)` returns {observation: value}
for one sentence. The same labeler scores real, phantom and generated reports.

Rules, in order:
1. The text is split into sentences by `xray_gen.data.reports.split_sentences` (the tokenizer's
   splitter: decimals, abbreviations, list numbers, wrapped lines) and each sentence into clauses
   at scope breakers ('but', 'however', 'although', ';', 'except', 'which', 'and there',
   'whereas', 'while').
2. Mentions are found by synonym patterns per observation. 'Neutral' mentions (heart size, cardiac
   silhouette, mediastinum, cardiomediastinal silhouette, lungs, costophrenic angles) only count
   when a modifier binds to them: a modifier within three words before ('normal heart size',
   'enlarged cardiac silhouette') or the first modifier after them in the clause ('heart size is
   normal'). 'normal'/'within normal limits'/'unremarkable'/'clear'/'sharp'/'not enlarged' make the
   mention negative; 'enlarged'/'widened'/'blunted' positive; 'borderline'/'upper limits of
   normal'/'top normal' uncertain. 'Lungs are clear' is a negative for Lung Opacity only.
3. Uncertainty wins over negation (so 'cannot exclude' is uncertain, not negative):
   a mention is uncertain when an uncertainty cue precedes it in its clause ('may', 'might',
   'possible', 'possibly', 'probable', 'likely', 'questionable', 'suspicious for', 'concerning
   for', 'suggestive of', 'cannot exclude', 'could represent', 'differential', 'versus', ...) or a
   post-cue follows it ('cannot be excluded', 'is not excluded', 'is possible', 'is suspected',
   'is questioned', 'is likely'), or it is a neighbour of 'versus'/'vs'. 'Likely' is treated as
   uncertain, as CheXpert does.
4. Otherwise a mention is negative when a negation cue precedes it in its clause ('no', 'without',
   'negative for', 'free of', 'clear of', 'no evidence of', 'absence of', 'resolution of', 'rather
   than', 'removal of') or a post-cue follows it ('is not seen', 'are not identified', 'has
   resolved', 'is absent', 'no longer seen', 'has been removed').
5. Otherwise it is positive. Across mentions and sentences: positive > uncertain > negative.
6. No Finding = 1 when no pathology (everything but No Finding and Support Devices) is positive or
   uncertain, else NaN; an empty text gives all NaN. The labeler does not propagate the CheXpert
   hierarchy (an 'edema' mention does not set Lung Opacity) - like the CheXpert labeler.
"""

from __future__ import annotations

import re

import numpy as np

from xray_gen.data import reports
from xray_gen.data.schema import CHEXPERT_LABELS, LABEL_INDEX, NUM_LABELS

_W = r"(?:\w[\w-]*)"
# Explicit mentions: any match is a mention of the observation.
MENTIONS: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        r"widen(?:ed|ing) (?:of the )?(?:superior )?mediastin\w*", r"mediastinal widening",
        r"enlarged cardiomediastinal silhouette", r"cardiomediastinal enlargement",
        r"mediastinal (?:mass|enlargement)",
    ],
    "Cardiomegaly": [
        r"cardiomegaly", r"cardiac enlargement", r"enlarge(?:d|ment of the) (?:heart|cardiac silhouette)",
        r"enlarged cardiac (?:silhouette|shadow|contour)",
    ],
    "Lung Opacity": [
        r"opacit(?:y|ies)", r"opacification", r"air ?space (?:disease|process)", r"infiltrates?",
        r"hazy densit(?:y|ies)", r"increased densit(?:y|ies)", r"reticular markings",
    ],
    "Lung Lesion": [r"nodules?", r"nodular", r"mass(?:es)?", r"lesions?", r"neoplasm", r"tumou?r"],
    "Edema": [
        r"edema", r"(?:vascular|venous) congestion", r"congestive heart failure", r"chf",
        r"vascular (?:redistribution|engorgement)",
    ],
    "Consolidation": [r"consolidat(?:ion|ions|ive|ed)"],
    "Pneumonia": [r"pneumonias?", r"infectious process", r"infection", r"bronchopneumonia"],
    "Atelectasis": [r"atelecta(?:sis|ses|tic)", r"collapse of the \w+ (?:\w+ )?lobe", r"lobar collapse"],
    "Pneumothorax": [r"pneumothora(?:x|ces)"],
    "Pleural Effusion": [
        r"effusions?", r"pleural fluid", r"hydrothorax", r"blunt(?:ing|ed) of the (?:\w+ )*?costophrenic",
        r"costophrenic (?:angle |sulcus )?blunting", r"blunted (?:\w+ )?costophrenic",
    ],
    "Pleural Other": [
        r"pleural (?:thickening|plaques?|scarring|calcifications?)", r"fibrothorax", r"pleural-parenchymal scarring",
    ],
    "Fracture": [r"fractur(?:e|es|ed)"],
    "Support Devices": [
        r"pacemakers?", r"pacers?", r"aicd", r"defibrillator", r"(?:pacer|pacing|pacemaker) leads?",
        r"(?:endotracheal|et|tracheostomy|nasogastric|ng|og|orogastric|enteric|feeding|chest) tubes?",
        r"ett", r"(?:central venous|central|ij|subclavian|picc|venous) (?:line|catheter)s?", r"catheters?",
        r"picc", r"lines and tubes", r"tubes and lines", r"support devices", r"swan-ganz",
        r"sternotomy wires", r"port-?a-?cath", r"portacath", r"(?:chest|venous|infusion) port",
    ],
}
# Neutral mentions: need a bound modifier (rule 2).
NEUTRAL: dict[str, list[str]] = {
    "Cardiomegaly": [r"heart size", r"cardiac silhouette", r"cardiac size", r"cardiac contours?",
                     r"heart(?! failure)"],
    "Enlarged Cardiomediastinum": [r"cardiomediastinal (?:silhouette|contours?)", r"mediastinal (?:contours?|silhouette)",
                                   r"mediastinum", r"hilar and mediastinal contours"],
    "Lung Opacity": [r"lungs", r"lung fields", r"lungs are otherwise"],
    "Pleural Effusion": [r"costophrenic (?:angles?|sulci)"],
}
_SIZE_NEG = [r"normal(?: in size)?", r"within normal limits", r"unremarkable", r"not enlarged",
             r"not widened"]
# Per neutral observation: (negative, positive, uncertain) modifiers.
MODIFIERS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "Cardiomegaly": (_SIZE_NEG, [r"enlarged", r"enlargement", r"prominent", r"increased"],
                     [r"borderline", r"upper limits? of normal", r"top[- ]normal", r"at the upper range"]),
    "Enlarged Cardiomediastinum": (_SIZE_NEG, [r"enlarged", r"enlargement", r"widened", r"widening"],
                                   [r"borderline", r"upper limits? of normal", r"top[- ]normal"]),
    "Lung Opacity": ([r"clear", r"normal", r"unremarkable"], [], []),
    "Pleural Effusion": ([r"sharp", r"clear", r"normal"], [r"blunted", r"blunting"], []),
}
PRE_UNC = [
    r"may", r"might", r"possible", r"possibly", r"probable", r"probably", r"likely", r"questionable",
    r"question of", r"suspicious for", r"suspected", r"concerning for", r"suggestive of", r"suggests?",
    r"cannot (?:be )?exclude", r"can ?not exclude", r"could", r"differential (?:diagnosis )?(?:includes?)?",
    r"equivocal", r"indeterminate", r"cannot rule out", r"rule out", r"not rule out", r"vs\.?", r"versus",
    r"or less likely", r"presumed", r"consider", r"\?",
]
POST_UNC = [
    r"(?:cannot|can not|could not) be (?:excluded|ruled out)", r"(?:is|are) not (?:excluded|ruled out)",
    r"not excluded", r"(?:is|are) possible", r"(?:is|are) suspected", r"(?:is|are) questioned",
    r"(?:is|are) (?:likely|probable)", r"(?:is|are) not entirely excluded",
]
PRE_NEG = [
    r"no", r"without", r"negative for", r"free of", r"clear of", r"absence of", r"resolution of",
    r"resolved", r"rather than", r"removal of", r"not", r"neither", r"nor", r"never",
]
POST_NEG = [
    r"(?:is|are|was|were) not (?:seen|identified|present|visualized|appreciated|demonstrated|evident)",
    r"(?:has|have) (?:resolved|been removed)", r"(?:is|are) (?:absent|resolved|removed)",
    r"no longer (?:seen|visualized|present|identified)", r"not (?:seen|identified|present|visualized)",
]
BREAKERS = r"\bbut\b(?! (?:otherwise )?(?:clear|normal))|\bhowever\b|\balthough\b|\bthough\b|;|\bexcept\b|\bwhich\b|\bwhereas\b|\bwhile\b|\band there\b|\bwith the exception of\b"


def _alt(patterns):
    return re.compile(r"\b(?:" + "|".join(patterns) + r")(?!\w)")


_MENTION_RE = {k: _alt(v) for k, v in MENTIONS.items()}
_NEUTRAL_RE = {k: _alt(v) for k, v in NEUTRAL.items()}
_MOD_RE = {k: [(_alt(u), -1.0) for u in [v[2]] if u] + [(_alt(v[0]), 0.0)] + [(_alt(p), 1.0) for p in [v[1]] if p]
           for k, v in MODIFIERS.items()}
_PRE_UNC, _POST_UNC = re.compile(r"(?:\b|(?<=\s))(?:" + "|".join(PRE_UNC) + r")(?!\w)"), _alt(POST_UNC)
_PRE_NEG, _POST_NEG = _alt(PRE_NEG), _alt(POST_NEG)
_VERSUS = re.compile(r"\b(?:versus|vs)\b")
_NO_CHANGE = re.compile(r"\b(?:no|without) (?:significant |interval |appreciable |substantial )*change\b")
_BREAK = re.compile(BREAKERS)
PATHOLOGIES = tuple(n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices"))


def _clause_status(clause: str, start: int, end: int) -> float:
    """Value of the mention at [start, end) in `clause` from uncertainty / negation cues."""
    before, after = clause[:start], clause[end:]
    if _PRE_UNC.search(before) or _POST_UNC.search(after):
        return -1.0
    if any(abs(v.start() - start) < 45 or abs(v.end() - end) < 45 for v in _VERSUS.finditer(clause)):
        return -1.0
    if _PRE_NEG.search(before) or _POST_NEG.search(after):
        return 0.0
    return 1.0


def _neutral_value(name: str, clause: str, start: int, end: int) -> float | None:
    """Value of a neutral mention from its bound modifier (rule 2), None when nothing binds."""
    pre = " ".join(clause[:start].split()[-3:])
    for cand, last in ((pre, True), (clause[end:], False)):
        hits = [(m.start(), v) for rx, v in _MOD_RE[name] for m in rx.finditer(cand)]
        if not hits:
            continue
        # The modifier nearest the mention; on a tie the order uncertain, negative, positive
        # (so 'not enlarged' beats the 'enlarged' inside it).
        pos = max(h[0] for h in hits) if last else min(h[0] for h in hits)
        found = [v for p, v in hits if p == pos][0]
        if not last and _PRE_UNC.search(cand[:pos]):  # 'the heart may be enlarged'
            return -1.0
        if found == 1.0:
            return _clause_status(clause, start, end)
        if _PRE_UNC.search(clause[:start]):
            return -1.0
        return found
    return None


def _aggregate(values) -> float:
    values = list(values)
    if not values:
        return float("nan")
    if 1.0 in values:
        return 1.0
    if -1.0 in values:
        return -1.0
    return 0.0


def label_sentence(sentence: str) -> dict[str, float]:
    """{observation: value} for the mentions in one sentence (No Finding excluded)."""
    text = " " + re.sub(r"\s+", " ", sentence.lower()).strip() + " "
    text = _NO_CHANGE.sub("unchanged", text)
    found: dict[str, list[float]] = {}
    for clause in _BREAK.split(text):
        spans, hits = [], []
        for name, rx in _MENTION_RE.items():
            for m in rx.finditer(clause):
                spans.append((m.start(), m.end()))
                hits.append((name, m.start(), m.end(), None))
        for name, rx in _NEUTRAL_RE.items():
            for m in rx.finditer(clause):
                if any(s <= m.start() < e for s, e in spans):
                    continue  # part of an explicit mention ('enlarged cardiac silhouette')
                v = _neutral_value(name, clause, m.start(), m.end())
                if v is not None:
                    hits.append((name, m.start(), m.end(), v))
        for name, s, e, v in hits:
            if v is None:
                v = _clause_status(clause, s, e)
            found.setdefault(name, []).append(v)
    return {k: _aggregate(v) for k, v in found.items()}


def label_report(text: str) -> np.ndarray:
    """CheXpert-style label vector (14,) float32 of a report (any sections, any order)."""
    out = np.full((NUM_LABELS,), np.nan, np.float32)
    sentences = reports.split_sentences(text)
    if not sentences:
        return out
    per: dict[str, list[float]] = {}
    for sentence in sentences:
        for name, v in label_sentence(sentence).items():
            per.setdefault(name, []).append(v)
    for name, values in per.items():
        out[LABEL_INDEX[name]] = _aggregate(values)
    pathology = out[[LABEL_INDEX[n] for n in PATHOLOGIES]]
    if not np.any((pathology == 1.0) | (pathology == -1.0)):
        out[LABEL_INDEX["No Finding"]] = 1.0
    return out


def label_reports(texts) -> np.ndarray:
    """(n, 14) labels of many reports."""
    return np.stack([label_report(t) for t in texts]) if len(texts) else np.zeros((0, NUM_LABELS), np.float32)
