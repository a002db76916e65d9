"""Tests for xray_gen.data.reports: sections, sentences, cleaning."""

import numpy as np
import pytest

from xray_gen.data.reports import (
    DEID_TOKEN,
    clean_sentence,
    extract_sections,
    report_sentences,
    split_sentences,
)
from xray_gen.data.schema import CHEXPERT_LABELS, LABEL_INDEX

MIMIC_REPORT = """                                 FINAL REPORT
 WET READ: ___ ___ ___ 10:30 AM
  Small left pleural effusion.
 ______________________________________________________________________________
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // eval for pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 The lungs are clear without focal consolidation.  Heart size is mildly
 enlarged, measuring 1.5 cm more than
 prior.  No pleural effusion or pneumothorax.

 IMPRESSION:

 1. Mild cardiomegaly.
 2. No acute cardiopulmonary process.

 NOTIFICATION:  Dr. ___ was notified at 10:30 a.m. on ___.
"""


def test_mimic_sections_multiline_and_excluded():
    findings, impression = extract_sections(MIMIC_REPORT)
    assert findings == (
        "The lungs are clear without focal consolidation. Heart size is mildly enlarged, "
        "measuring 1.5 cm more than prior. No pleural effusion or pneumothorax."
    )
    assert impression == "1. Mild cardiomegaly. 2. No acute cardiopulmonary process."
    for excluded in ("pleural effusion.", "cough", "Chest PA", "notified", "CHEST (PA"):
        assert excluded not in impression
    assert "Small left" not in findings and "cough" not in findings


def test_combined_findings_and_impression():
    text = "INDICATION: fever.\nFINDINGS AND IMPRESSION: Lungs are clear.\n  No effusion.\nHISTORY: cough"
    assert extract_sections(text) == ("Lungs are clear. No effusion.", "")
    assert extract_sections(text, combined="impression") == ("", "Lungs are clear. No effusion.")
    assert extract_sections(text, combined="both") == (
        "Lungs are clear. No effusion.",
        "Lungs are clear. No effusion.",
    )
    with pytest.raises(ValueError):
        extract_sections(text, combined="nope")


def test_missing_sections_and_conclusion():
    assert extract_sections("FINDINGS: Heart normal.\nCOMPARISON: None.") == ("Heart normal.", "")
    assert extract_sections("TECHNIQUE: AP.\nCONCLUSION: No change.") == ("", "No change.")
    # Lower/title-case known headers are recognised too.
    assert extract_sections("Findings: Clear lungs.\nImpression: Normal.") == ("Clear lungs.", "Normal.")


def test_inline_headers_and_subheadings():
    text = "EXAM: chest.\nFINDINGS: Stable lines. IMPRESSION: No change."
    assert extract_sections(text) == ("Stable lines.", "No change.")
    structured = "FINDINGS:\nLUNGS: Clear.\nHEART: Normal size.\nIMPRESSION: Normal."
    assert extract_sections(structured) == ("LUNGS: Clear. HEART: Normal size.", "Normal.")


def test_fallback_last_paragraph():
    # No findings/impression headers: last paragraph becomes the impression.
    text = "INDICATION: cough\n\nThe lungs are clear.\nNo effusion."
    assert extract_sections(text) == ("", "The lungs are clear. No effusion.")
    assert extract_sections("No acute disease.") == ("", "No acute disease.")
    # ...unless the last paragraph is an excluded section.
    assert extract_sections("INDICATION: cough\n\nCOMPARISON: None.") == ("", "")
    assert extract_sections("") == ("", "")


def test_openi_xxxx_text():
    findings, impression = extract_sections(
        "FINDINGS: The XXXX examination consists of frontal and lateral radiographs. "
        "XXXX XXXX are normal.\nIMPRESSION: No acute cardiopulmonary disease."
    )
    assert split_sentences(findings) == [
        "The XXXX examination consists of frontal and lateral radiographs.",
        "XXXX XXXX are normal.",
    ]
    f, i = report_sentences(findings, impression)
    assert f == [
        f"the {DEID_TOKEN} examination consists of frontal and lateral radiographs",
        f"{DEID_TOKEN} are normal",
    ]
    assert i == ["no acute cardiopulmonary disease"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Nodule measures 1.5 cm. No effusion.", ["Nodule measures 1.5 cm.", "No effusion."]),
        ("Mass 2.3 x 1.1 cm in the apex. Stable.", ["Mass 2.3 x 1.1 cm in the apex.", "Stable."]),
        ("1. Cardiomegaly. 2. No effusion.", ["Cardiomegaly.", "No effusion."]),
        ("1) Cardiomegaly 2) No effusion", ["Cardiomegaly", "No effusion"]),
        ("1.Cardiomegaly.\n2.Edema.", ["Cardiomegaly.", "Edema."]),
        ("Grade 2. Stable since 2012. No change.", ["Grade 2.", "Stable since 2012.", "No change."]),
        ("Opacity, e.g. pneumonia, i.e. infection.", ["Opacity, e.g. pneumonia, i.e. infection."]),
        ("Discussed with Dr. Smith at St. Mary. Done.", ["Discussed with Dr. Smith at St. Mary.", "Done."]),
        ("Size approx. 3 cm vs. 2 cm before.", ["Size approx. 3 cm vs. 2 cm before."]),
        ("See Fig. 2 and image no. 4 today.", ["See Fig. 2 and image no. 4 today."]),
        ("Pneumothorax? No.", ["Pneumothorax?", "No."]),
        ("Called at 10:30 a.m. on ___. Read by ___.", ["Called at 10:30 a.m. on ___.", "Read by ___."]),
        ("Called at 10:30 a.m. today.", ["Called at 10:30 a.m. today."]),
        ("XXXX XXXX. Heart normal.", ["XXXX XXXX.", "Heart normal."]),
        ("Lungs are\nclear.\nNo effusion", ["Lungs are clear.", "No effusion"]),
        ("Lungs clear\nHeart normal\n\nno effusion", ["Lungs clear", "Heart normal", "no effusion"]),
        ("The lungs are clear.No effusion.", ["The lungs are clear.", "No effusion."]),
        ("", []),
        # decimals, abbreviations, no final period
        ("ET tube 3.5 cm above the carina. Effusion, e.g. loculated", ["ET tube 3.5 cm above the carina.",
                                                                     "Effusion, e.g. loculated"]),
        ("Seen by Dr. Jones, i.e. the fellow. Size 0.5 x 12.25 mm", ["Seen by Dr. Jones, i.e. the fellow.",
                                                                   "Size 0.5 x 12.25 mm"]),
        # whitespace runs, blank lines, CRLF, whitespace-only and None
        ("No effusion.   Heart   normal.\n\n\n  Lungs clear.", ["No effusion.", "Heart normal.", "Lungs clear."]),
        ("Lungs are\r\nclear.\r\nNo effusion.", ["Lungs are clear.", "No effusion."]),
        (" \n\t\n  ", []),
        (None, []),
        # missing space after a full stop before a lower-case word (glued generated text)
        ("the lungs are clear.no effusion.", ["the lungs are clear.", "no effusion."]),
        # a wrapped line is joined; newline-joined unpunctuated sentences are one per line
        ("No pleural effusion or\npneumothorax.", ["No pleural effusion or pneumothorax."]),
        ("no pneumothorax\ncardiomegaly\nsmall effusion", ["no pneumothorax", "cardiomegaly", "small effusion"]),
        # "? pneumonia" (query prefix) stays in its sentence; "?" after a word ends one
        ("Basal opacity, ? pneumonia. No effusion.", ["Basal opacity, ? pneumonia.", "No effusion."]),
        ("Opacity. ? Pneumonia.", ["Opacity.", "? Pneumonia."]),
        ("Pneumothorax ? No.", ["Pneumothorax ?", "No."]),
        # a section header alone is not a sentence and does not swallow its body; sub-headings do
        ("FINDINGS:\nthe lungs are clear.\nIMPRESSION:\nno change.", ["the lungs are clear.", "no change."]),
        ("IMPRESSION: 1. Edema. 2. No effusion.", ["Edema.", "No effusion."]),
        ("LUNGS:\nclear.", ["LUNGS: clear."]),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


TRICKY_REPORT = """FINDINGS:
Heart size is mildly
enlarged, measuring 1.5 cm more than
prior.  No pleural effusion or
pneumothorax. Discussed with Dr. Smith, e.g. by phone at 10:30 a.m. today

IMPRESSION:
1. Mild cardiomegaly
2. ? pneumonia"""


def test_labeler_and_privacy_use_the_shared_splitter(monkeypatch):
    from xray_gen.data import labeler, reports
    from xray_gen.evaluation import privacy

    sentences = split_sentences(TRICKY_REPORT)
    assert sentences == [
        "Heart size is mildly enlarged, measuring 1.5 cm more than prior.",
        "No pleural effusion or pneumothorax.",
        "Discussed with Dr. Smith, e.g. by phone at 10:30 a.m. today",
        "Mild cardiomegaly",
        "? pneumonia",
    ]
    # privacy = the same sentences, only normalised for comparison
    assert privacy.normalised_sentences(TRICKY_REPORT) == [privacy.normalise_sentence(s) for s in sentences]
    # the labeler labels exactly these sentences
    got = labeler.label_report(TRICKY_REPORT)
    want = np.full(len(CHEXPERT_LABELS), np.nan, np.float32)
    for name, v in {"Cardiomegaly": 1, "Pleural Effusion": 0, "Pneumothorax": 0, "Pneumonia": -1}.items():
        want[LABEL_INDEX[name]] = v
    np.testing.assert_array_equal(got, want)
    # both call it at run time (no private copy): a replaced splitter changes what they see
    monkeypatch.setattr(reports, "split_sentences", lambda text: text.split("|"))
    assert privacy.normalised_sentences("No effusion. Heart normal|OK") == ["no effusion. heart normal", "ok"]
    assert labeler.label_report("No effusion|edema")[LABEL_INDEX["Edema"]] == 1  # two "sentences"
    assert labeler.label_report("No effusion. Edema")[LABEL_INDEX["Edema"]] == 0  # one "sentence"


@pytest.mark.parametrize(
    "sentence, expected",
    [
        ("The lungs are clear.", "the lungs are clear"),
        ("Nodule (1.5cm), stable.", "nodule ( 1.5 cm ) , stable"),
        ("Mass 2.3x1.1 cm.", "mass 2.3 x 1.1 cm"),
        ("Dr. ___ notified at 10:30 a.m.", f"dr. {DEID_TOKEN} notified at 10:30 a.m."),
        ("___ ___ ___ at XXXX", f"{DEID_TOKEN} at {DEID_TOKEN}"),
        ("___F with cough", f"{DEID_TOKEN} f with cough"),
        ("The patient's heart: normal; 'stable'.", "the patient's heart : normal ; stable"),
        ("1. Cardiomegaly.", "cardiomegaly"),
        ("2.5 cm nodule", "2.5 cm nodule"),
        ("  Well-expanded   lungs  ", "well-expanded lungs"),
        ("Clear. Really.", "clear . really"),
    ],
)
def test_clean_sentence(sentence, expected):
    out = clean_sentence(sentence)
    assert out == expected
    assert clean_sentence(out) == out  # idempotent: the tokenizer re-cleans its input


def test_report_sentences_drops_empty():
    f, i = report_sentences("The lungs are clear. ... ", "")
    assert f == ["the lungs are clear"] and i == []
