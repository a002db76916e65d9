"""Radiology report text: section extraction, sentence splitting and sentence cleaning.

The functions here turn a free-text report (a MIMIC-CXR ``sNNN.txt`` file, an Open-i report, a
phantom report) into what the models consume:

* `extract_sections` -> ``(findings, impression)``, each one line with whitespace collapsed;
* `split_sentences` -> sentences of one section, list numbering stripped;
* `clean_sentence` -> a lower-cased, tokenizer-ready sentence;
* `report_sentences` -> cleaned sentences for both sections at once (what the tokenizer is trained
  on and what hierarchical models encode).

Everything is pure Python (``re``), deterministic and dependency free, so it can run inside data
pipelines and in tests.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "DEID_TOKEN",
    "extract_sections",
    "split_sentences",
    "clean_sentence",
    "report_sentences",
]

#: Canonical token for de-identified spans (MIMIC-CXR "___", Open-i "XXXX").
DEID_TOKEN = "xxxx"

# --------------------------------------------------------------------------------------------
# Section extraction
# --------------------------------------------------------------------------------------------

_FINDINGS, _IMPRESSION, _COMBINED, _OTHER = "findings", "impression", "combined", "other"

# Known section names (normalised: upper case, single spaces, no trailing 'S' handling needed
# because both forms are listed). These are also recognised in title/lower case at line start.
_KNOWN_SECTIONS: dict[str, str] = {
    "FINDINGS": _FINDINGS,
    "FINDING": _FINDINGS,
    "IMPRESSION": _IMPRESSION,
    "IMPRESSIONS": _IMPRESSION,
    "CONCLUSION": _IMPRESSION,
    "CONCLUSIONS": _IMPRESSION,
    "OPINION": _IMPRESSION,
    "FINDINGS AND IMPRESSION": _COMBINED,
    "FINDINGS AND IMPRESSIONS": _COMBINED,
    "FINDINGS/IMPRESSION": _COMBINED,
    "FINDINGS / IMPRESSION": _COMBINED,
    "IMPRESSION AND FINDINGS": _COMBINED,
    "FINDINGS AND CONCLUSION": _COMBINED,
    "INDICATION": _OTHER,
    "INDICATIONS": _OTHER,
    "TECHNIQUE": _OTHER,
    "COMPARISON": _OTHER,
    "COMPARISONS": _OTHER,
    "HISTORY": _OTHER,
    "CLINICAL HISTORY": _OTHER,
    "EXAMINATION": _OTHER,
    "EXAM": _OTHER,
    "WET READ": _OTHER,
    "NOTIFICATION": _OTHER,
    "REASON FOR EXAMINATION": _OTHER,
    "REASON FOR EXAM": _OTHER,
    "RECOMMENDATION": _OTHER,
    "RECOMMENDATIONS": _OTHER,
    "ADDENDUM": _OTHER,
    "NOTE": _OTHER,
}

# Anatomical sub-headings of structured templates; these are part of the enclosing section.
_SUBHEADER_WORDS = {
    "LUNG", "LUNGS", "HEART", "PLEURA", "PLEURAL", "MEDIASTINUM", "MEDIASTINAL",
    "CARDIOMEDIASTINAL", "BONES", "OSSEOUS", "SOFT", "TISSUES", "TUBE", "TUBES", "LINE", "LINES", "HILA", "HILAR",
    "DIAPHRAGM", "ABDOMEN", "AIRWAYS", "CARDIAC", "SKELETAL", "DEVICES", "AORTA", "PARENCHYMA",
}

# Any header at the start of a line: a word-ish name followed by a colon. Whether the name is
# accepted as a header is decided in `_classify_header` (upper case, or a known name).
_LINE_HEADER = re.compile(r"^[ \t]*(?P<name>[A-Za-z][A-Za-z /&()\-]{0,48}?)[ \t]*:", re.MULTILINE)
# FINDINGS / IMPRESSION / CONCLUSION headers written in upper case in the middle of a line
# ("... no change.  IMPRESSION: stable."), which older report formats do.
_INLINE_HEADER = re.compile(
    r"(?<![A-Za-z])(?P<name>FINDINGS? AND IMPRESSIONS?|FINDINGS?|IMPRESSIONS?|CONCLUSIONS?)[ \t]*:"
)
# "FINAL REPORT" (MIMIC-CXR) is a title line without a colon; text after it is unlabelled.
_FINAL_REPORT = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.MULTILINE)


def _normalise_name(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip()).upper()


def _classify_header(name: str) -> str | None:
    """Section kind for a header name, or None if it does not look like a header."""
    norm = _normalise_name(name)
    if norm in _KNOWN_SECTIONS:
        return _KNOWN_SECTIONS[norm]
    if _SUBHEADER_WORDS.intersection(re.split(r"[ /&()\-]+", norm)):
        return None  # "LUNGS:", "HEART:" inside a structured FINDINGS section stay in the body
    letters = [c for c in name if c.isalpha()]
    # Unknown headers count only when written in upper case (MIMIC convention) and are short.
    if len(letters) >= 2 and name == name.upper() and len(norm.split()) <= 6:
        if norm.startswith("FINDING") and "IMPRESSION" in norm:
            return _COMBINED
        if norm.startswith("IMPRESSION"):
            return _IMPRESSION
        if norm.startswith("FINDING"):
            return _FINDINGS
        return _OTHER
    return None


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _section_spans(text: str) -> list[tuple[int, int, str]]:
    """(header_start, body_start, kind) for every header, sorted; kind None = unlabelled."""
    spans: dict[int, tuple[int, int, str]] = {}
    for m in _LINE_HEADER.finditer(text):
        kind = _classify_header(m.group("name"))
        if kind is not None:
            spans[m.start("name")] = (m.start("name"), m.end(), kind)
    for m in _INLINE_HEADER.finditer(text):
        if m.start("name") not in spans and not any(s <= m.start() < b for s, b, _ in spans.values()):
            spans[m.start("name")] = (m.start("name"), m.end(), _classify_header(m.group("name")))
    for m in _FINAL_REPORT.finditer(text):
        spans[m.start()] = (m.start(), m.end(), "unlabelled")
    return sorted(spans.values())


def extract_sections(text: str, combined: str = "findings") -> tuple[str, str]:
    """Split a free-text report into ``(findings, impression)``.

    Headers are recognised at the start of a line as ``NAME:`` where NAME is upper case (MIMIC-CXR
    style, e.g. ``FINDINGS:``, ``WET READ:``) or one of the known section names in any case
    (``Findings:``). Upper-case ``FINDINGS:`` / ``IMPRESSION:`` / ``CONCLUSION:`` are also found in
    the middle of a line. ``FINAL REPORT`` on its own line starts unlabelled text. Bodies run to
    the next header; they are joined into one line with whitespace collapsed. Sections other than
    findings/impression (INDICATION, TECHNIQUE, COMPARISON, HISTORY, EXAMINATION, WET READ,
    NOTIFICATION, ...) are dropped. Repeated sections are concatenated in order.

    ``CONCLUSION``/``OPINION`` count as impression. A combined ``FINDINGS AND IMPRESSION:`` section
    goes to ``combined`` = "findings" (default), "impression" or "both"; it is appended after any
    separate section of the same kind.

    Fallback when the report has neither findings nor impression (nor a combined section): the
    last paragraph (blank-line separated) of the report becomes the impression, unless that
    paragraph is the body of an excluded section (e.g. ends in ``COMPARISON: ___``), in which case
    both are "". This mirrors the MIMIC-CXR section parser's "last paragraph" rule.

    Missing sections are returned as "".
    """
    if combined not in ("findings", "impression", "both"):
        raise ValueError(f"combined must be 'findings', 'impression' or 'both', got {combined!r}")
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n")
    spans = _section_spans(text)
    parts: dict[str, list[str]] = {_FINDINGS: [], _IMPRESSION: [], _COMBINED: []}
    for i, (_, body_start, kind) in enumerate(spans):
        end = spans[i + 1][0] if i + 1 < len(spans) else len(text)
        body = _collapse(text[body_start:end])
        if kind in parts and body:
            parts[kind].append(body)
    findings = list(parts[_FINDINGS])
    impression = list(parts[_IMPRESSION])
    if combined in ("findings", "both"):
        findings += parts[_COMBINED]
    if combined in ("impression", "both"):
        impression += parts[_COMBINED]
    if findings or impression or parts[_COMBINED]:
        return " ".join(findings), " ".join(impression)
    return "", _fallback_impression(text)


def _fallback_impression(text: str) -> str:
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    if not paragraphs:
        return ""
    last = paragraphs[-1]
    # If the last paragraph starts with (or contains) an excluded header, take only the text
    # before its first header; if nothing is left it was an excluded section's body.
    spans = _section_spans(last)
    if spans:
        head = _collapse(last[: spans[0][0]])
        if head:
            return head
        if spans[-1][2] == "unlabelled":
            return _collapse(last[spans[-1][1]:])
        return ""
    # A last paragraph with no header may still continue an excluded section that started in an
    # earlier paragraph without a blank line; we accept it as the impression (documented above).
    return _collapse(last)


# --------------------------------------------------------------------------------------------
# Sentence splitting
# --------------------------------------------------------------------------------------------

# Words whose trailing period never ends a sentence (lower case, without the final period).
_NEVER_END = {
    "e.g", "i.e", "eg", "ie", "dr", "drs", "approx", "appx", "vs", "v", "st", "fig", "figs",
    "mr", "mrs", "ms", "prof", "cf", "ca", "resp", "incl", "esp", "viz", "sr", "jr",
}
# Words that end a sentence only when the next word starts with an upper-case letter.
_END_IF_CAPITAL = {"a.m", "p.m", "am", "pm", "etc", "et al", "al"}
# Words that do not end a sentence when followed by a number ("no. 3", "Fig. 2").
_NOT_END_BEFORE_NUMBER = {"no", "nos", "num", "nr", "vol", "pg", "p"}

_LIST_MARKER = re.compile(r"^\(?(\d{1,2})[.)]$")
_CLOSERS = "\"')]}"
_PROSE_STOP = re.compile(r"[.!?][\"')\]}]*\s+[A-Z]")  # a sentence end inside a line of prose


def _is_header(line: str) -> bool:
    """A section header alone ("FINDINGS:", "WET READ:"), not a sub-heading such as "LUNGS:"."""
    m = _LINE_HEADER.match(line)
    return m is not None and not line[m.end():].strip() and _classify_header(m.group("name")) is not None


def _split_lines(paragraph: str) -> list[str]:
    """Join wrapped lines; a newline is a boundary before a list item or a capitalised line, or
    after a line ending in sentence punctuation or a section header. A paragraph without a full
    stop at a line end or before a capital is not prose but one sentence per line (a sentence
    list joined with newlines, e.g. cleaned sentences, which are lower case without final stop)."""
    lines = [ln.strip() for ln in paragraph.split("\n") if ln.strip()]
    if not any(ln.rstrip(_CLOSERS).endswith(".") or _PROSE_STOP.search(ln) for ln in lines):
        return lines
    segments: list[str] = []
    for line in lines:
        if segments:
            prev = segments[-1]
            starts_item = re.match(r"^\(?\d{1,2}[.)]\s", line) is not None
            starts_capital = line[0].isupper() and not line.startswith(("XXXX",))
            if starts_item or starts_capital or prev.rstrip(_CLOSERS)[-1:] in ".!?" or _is_header(prev):
                segments.append(line)
            else:
                segments[-1] = prev + " " + line
        else:
            segments.append(line)
    return segments


def _ends_sentence(word: str, next_word: str | None, first: bool) -> bool:
    core = word.rstrip(_CLOSERS)
    if not core:
        return False
    if core == "?":  # a lone "?" is usually the "query" prefix ("? pneumonia"), an uncertainty cue
        return next_word is None or (not first and next_word[:1].isupper())
    if core[-1] in "!?":
        return True
    if core[-1] != ".":
        return False
    stem = core.rstrip(".").lower().lstrip("(\"'[")
    if not stem:  # a lone "." or "..."
        return True
    if stem in _NEVER_END:
        return False
    if next_word is None:
        return True
    nxt = next_word.lstrip("(\"'[")
    if stem in _END_IF_CAPITAL:
        return nxt[:1].isupper()
    if stem in _NOT_END_BEFORE_NUMBER and nxt[:1].isdigit():
        return False
    # Single-letter initials before a capitalised name ("J. Smith") are rare in de-identified
    # reports; we treat them as sentence ends like any other word.
    return True


def _split_segment(segment: str) -> list[str]:
    # "clear.No effusion" / "clear.no effusion" -> "clear. No effusion" (missing space after a
    # full stop; "e.g.x", "1.5" and "St.Mary" do not match).
    segment = re.sub(r"(?<=[a-z]{2})\.(?=[A-Za-z][a-z])", ". ", segment)
    # "1.Cardiomegaly" / "2)No" -> "1. Cardiomegaly" at word starts (not decimals: needs a letter).
    segment = re.sub(r"(?:(?<=^)|(?<=\s))(\(?\d{1,2}[.)])(?=[A-Za-z])", r"\1 ", segment)
    words = segment.split()
    sentences: list[list[str]] = []
    current: list[str] = []
    last_marker = 0
    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else None
        m = _LIST_MARKER.match(word)
        if m and nxt is not None and not _LIST_MARKER.match(nxt):
            number = int(m.group(1))
            if not current or number == last_marker + 1:
                if current:
                    sentences.append(current)
                current = []
                last_marker = number
                continue
        current.append(word)
        if _ends_sentence(word, nxt, len(current) == 1):
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return [" ".join(s) for s in sentences]


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences (original case and punctuation kept, numbering removed).

    The package's only splitter, so the tokenizer, the labeler and the privacy checks agree on
    what a sentence is. Handles decimals ("1.5 cm", "2.3 x 1.1 cm"), numbered lists ("1. A. 2. B."
    and "1) A 2) B"; an unpunctuated item ends where the next number starts), abbreviations
    ("e.g.", "i.e.", "Dr.", "approx.", "vs.", "St.", "Fig.", "no. 3"), de-identification tokens
    ("XXXX", "___"), times ("10:30 a.m." ends a sentence only before a capital), a missing space
    ("clear.No"), the "? pneumonia" query prefix (kept with its sentence, it is a cue) and
    newlines: see `_split_lines` (wrapped prose is joined, newline-joined sentence lists are not).
    A section header alone ("FINDINGS:") is not a sentence.
    """
    text = unicodedata.normalize("NFKC", text or "").replace("\r\n", "\n").replace("\r", "\n")
    out: list[str] = []
    for paragraph in re.split(r"\n[ \t]*\n", text):
        for segment in _split_lines(paragraph):
            out.extend(s for s in _split_segment(segment) if re.search(r"[A-Za-z0-9_]", s) and not _is_header(s))
    return out


# --------------------------------------------------------------------------------------------
# Sentence cleaning
# --------------------------------------------------------------------------------------------

_DEID = re.compile(r"_{2,}|(?<![A-Za-z])X{3,}(?![A-Za-z])")
_DEID_RUN = re.compile(rf"\b{DEID_TOKEN}(?:\s+{DEID_TOKEN}\b)+")
_UNITS = r"(?:mm|cm|m|ml|cc|kg|g|mg|kv|mas|in|ft|%)"
_ABBREV_KEEP = {"e.g.", "i.e.", "dr.", "a.m.", "p.m.", "vs.", "st.", "approx.", "fig.", "no.", "etc."}


def clean_sentence(sentence: str) -> str:
    """Normalise one sentence for tokenisation.

    Lower-cases; maps de-identification runs ("___", "XXXX", and adjacent runs of them) to one
    `DEID_TOKEN`; separates punctuation ``, ; : ( ) [ ] ? ! "`` into tokens (but keeps times
    "10:30", decimals "1.5", ratios "1/2", hyphenated words and apostrophes); splits numbers from
    glued units ("1.5cm" -> "1.5 cm", "2x3" -> "2 x 3"); keeps a short list of abbreviations with
    their period ("e.g.", "dr.", "a.m."); other periods inside the sentence become their own "."
    token; strips leading list numbering and drops the trailing period. Whitespace is collapsed.
    """
    s = unicodedata.normalize("NFKC", sentence or "")
    s = _DEID.sub(f" {DEID_TOKEN} ", s)
    s = s.lower()
    s = re.sub(r"^\s*\(?\d{1,2}[.)]\s+", "", s)  # leading list number
    # numbers glued to units / dimensions
    s = re.sub(rf"(\d)({_UNITS})(?![a-z])", r"\1 \2", s)
    s = re.sub(r"(\d)\s*[x×]\s*(?=\d)", r"\1 x ", s)
    # punctuation that is always its own token (colon only when not inside a time like 10:30)
    s = re.sub(r"([,;()\[\]?!\"{}])", r" \1 ", s)
    s = re.sub(r"(?<!\d):|:(?!\d)", " : ", s)
    # stray quotes at word edges ("'clear'") but keep apostrophes inside words ("patient's")
    s = re.sub(r"(?:(?<=\s)|^)'|'(?=[\s.,;:!?]|$)", " ", s)
    tokens = []
    for tok in s.split():
        if tok in _ABBREV_KEEP or "." not in tok:
            tokens.append(tok)
            continue
        # split sentence-level periods off words; keep internal ones (1.5, e.g) intact
        m = re.match(r"^(.*?)(\.+)$", tok)
        if m and m.group(1):
            tokens.extend([m.group(1), "."])
        elif m:
            tokens.append(".")
        else:
            tokens.append(tok)
    while tokens and tokens[-1] == ".":
        tokens.pop()
    s = " ".join(tokens)
    s = _DEID_RUN.sub(DEID_TOKEN, s)
    return s


def report_sentences(findings: str, impression: str) -> tuple[list[str], list[str]]:
    """Cleaned, non-empty sentences of the findings and the impression sections."""

    def one(text: str) -> list[str]:
        return [c for c in (clean_sentence(s) for s in split_sentences(text)) if c]

    return one(findings), one(impression)
