"""Tests for xray_gen.data.labeler on hand-written report sentences (Open-i / MIMIC style)."""

import numpy as np
import pytest

from xray_gen.data.labeler import label_report, label_sentence
from xray_gen.data.schema import LABEL_INDEX

NAN = float("nan")

SENTENCES = [
    # (sentence, expected {observation: value}); observations not listed must be absent.
    ("No pneumothorax or large pleural effusion.", {"Pneumothorax": 0, "Pleural Effusion": 0}),
    ("No focal consolidation, pleural effusion, or pneumothorax.",
     {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0}),
    ("The heart is normal in size.", {"Cardiomegaly": 0}),
    ("Heart size is within normal limits.", {"Cardiomegaly": 0}),
    ("Normal heart size.", {"Cardiomegaly": 0}),
    ("The cardiac silhouette is not enlarged.", {"Cardiomegaly": 0}),
    ("The lungs are clear.", {"Lung Opacity": 0}),
    ("Heart size and mediastinal contours are within normal limits.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0}),
    ("The cardiomediastinal silhouette is enlarged.", {"Enlarged Cardiomediastinum": 1}),
    ("Mild cardiomegaly.", {"Cardiomegaly": 1}),
    ("The heart is moderately enlarged.", {"Cardiomegaly": 1}),
    ("Enlarged cardiac silhouette.", {"Cardiomegaly": 1}),
    ("Heart size is at the upper limits of normal.", {"Cardiomegaly": -1}),
    ("The heart may be mildly enlarged.", {"Cardiomegaly": -1}),
    ("Stable cardiomegaly without pulmonary edema.", {"Cardiomegaly": 1, "Edema": 0}),
    ("Small left pleural effusion without pneumothorax.", {"Pleural Effusion": 1, "Pneumothorax": 0}),
    ("Right basilar opacity may represent atelectasis or pneumonia.",
     {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    ("Atelectasis versus pneumonia at the left base.", {"Atelectasis": -1, "Pneumonia": -1}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": -1}),
    ("Cannot exclude a small right pneumothorax.", {"Pneumothorax": -1}),
    ("Findings are suggestive of mild pulmonary edema.", {"Edema": -1}),
    ("Likely bibasilar atelectasis.", {"Atelectasis": -1}),
    ("Mild pulmonary vascular congestion.", {"Edema": 1}),
    ("The previously seen left pleural effusion has resolved.", {"Pleural Effusion": 0}),
    ("No evidence of pneumothorax.", {"Pneumothorax": 0}),
    ("Negative for acute fracture.", {"Fracture": 0}),
    ("There is a nondisplaced fracture of the left seventh rib.", {"Fracture": 1}),
    ("A 1.5 cm nodular opacity in the right upper lobe.", {"Lung Opacity": 1, "Lung Lesion": 1}),
    ("Left chest wall pacemaker with leads in the right atrium and ventricle.", {"Support Devices": 1}),
    ("ET tube tip terminates 4 cm above the carina.", {"Support Devices": 1}),
    ("Right IJ central venous catheter tip in the SVC.", {"Support Devices": 1}),
    ("Blunting of the right costophrenic angle.", {"Pleural Effusion": 1}),
    ("The costophrenic angles are sharp.", {"Pleural Effusion": 0}),
    ("Right apical pleural thickening.", {"Pleural Other": 1}),
    ("The mediastinum is widened.", {"Enlarged Cardiomediastinum": 1}),
    ("No pneumothorax, but there is a small left effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("No change in the small left pleural effusion.", {"Pleural Effusion": 1}),
    ("Interval removal of the endotracheal tube.", {"Support Devices": 0}),
    ("Lungs are hyperinflated but clear.", {"Lung Opacity": 0}),
    ("No acute cardiopulmonary abnormality.", {}),
    ("Low lung volumes.", {}),
    ("Comparison: XXXX.", {}),
    ("Heart failure is suspected.", {"Edema": NAN}),
    ("Left basilar air space disease concerning for pneumonia.", {"Lung Opacity": 1, "Pneumonia": -1}),
    ("Streaky opacities at the bases, likely atelectasis.", {"Lung Opacity": 1, "Atelectasis": -1}),
    ("The heart is top normal in size.", {"Cardiomegaly": -1}),
    ("Right-sided Port-A-Cath with tip in the SVC.", {"Support Devices": 1}),
    ("Lungs are clear without focal consolidation, effusion, or pneumothorax.",
     {"Lung Opacity": 0, "Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0}),
    ("Increased interstitial markings may reflect mild edema or atypical infection.", {"Edema": -1, "Pneumonia": -1}),  # 'heart failure' is no heart-size mention
]


@pytest.mark.parametrize("sentence,expected", SENTENCES)
def test_label_sentence(sentence, expected):
    got = label_sentence(sentence)
    want = {k: float(v) for k, v in expected.items() if not np.isnan(v)}
    assert "Cardiomegaly" not in got or "Cardiomegaly" in want, got
    assert got == want, f"{sentence!r}: {got}"


def _vec(d):
    out = np.full(14, np.nan, np.float32)
    for k, v in d.items():
        out[LABEL_INDEX[k]] = v
    return out


def test_report_precedence_positive_beats_uncertain_beats_negative():
    text = ("FINDINGS: No pleural effusion. Possible small left effusion. Small left pleural effusion. "
            "Possible pneumonia. No pneumonia. No pneumothorax.\nIMPRESSION: Left effusion.")
    lab = label_report(text)
    assert lab[LABEL_INDEX["Pleural Effusion"]] == 1
    assert lab[LABEL_INDEX["Pneumonia"]] == -1
    assert lab[LABEL_INDEX["Pneumothorax"]] == 0
    assert np.isnan(lab[LABEL_INDEX["No Finding"]])


def test_no_finding_rule():
    normal = label_report("FINDINGS: The heart is normal in size. The lungs are clear. No pneumothorax. "
                          "ET tube in standard position.\nIMPRESSION: No acute cardiopulmonary process.")
    np.testing.assert_array_equal(normal, _vec({"No Finding": 1, "Cardiomegaly": 0, "Lung Opacity": 0,
                                                "Pneumothorax": 0, "Support Devices": 1}))
    hedged = label_report("Possible right lower lobe pneumonia.")
    assert np.isnan(hedged[LABEL_INDEX["No Finding"]]) and hedged[LABEL_INDEX["Pneumonia"]] == -1
    assert np.all(np.isnan(label_report("   ")))


@pytest.mark.parametrize("text, expected", [
    # a decimal is not a sentence end: "No" still scopes over the nodule
    ("No 2.5 cm nodule. Effusion.\n1. Cardiomegaly",
     {"Lung Lesion": 0, "Pleural Effusion": 1, "Cardiomegaly": 1}),
    # a wrapped line is one sentence: "No" scopes over the wrapped "pneumothorax"
    ("No pleural effusion or\npneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0}),
    # cleaned sentences joined by newlines (no final periods): each line is a sentence
    ("no pneumothorax\ncardiomegaly", {"Pneumothorax": 0, "Cardiomegaly": 1}),
    # "?" ends "Pneumothorax?", so "No" does not reach back and "?" does not reach forward
    ("Pneumothorax? No effusion.", {"Pneumothorax": 1, "Pleural Effusion": 0}),
    # ... but the "? pneumonia" query prefix is an uncertainty cue inside its sentence
    ("Right basal opacity, ? pneumonia. No effusion.",
     {"Lung Opacity": 1, "Pneumonia": -1, "Pleural Effusion": 0}),
    # abbreviations do not end sentences: "vs." keeps the effusion uncertain
    ("Called at 10:30 a.m. today. Atelectasis vs. effusion.", {"Atelectasis": -1, "Pleural Effusion": -1}),
])
def test_report_sentences_split_by_shared_splitter(text, expected):
    got = label_report(text)
    for name, value in expected.items():
        assert got[LABEL_INDEX[name]] == value, (name, got[LABEL_INDEX[name]])


def test_mimic_style_report():
    text = """FINDINGS: PA and lateral views of the chest. There is a new moderate right pleural effusion
    with adjacent atelectasis. Heart size is normal. No pneumothorax. Mild pulmonary vascular congestion.
    IMPRESSION: 1. Moderate right pleural effusion. 2. Cannot exclude superimposed pneumonia."""
    lab = label_report(text)
    np.testing.assert_array_equal(lab, _vec({
        "Pleural Effusion": 1, "Atelectasis": 1, "Cardiomegaly": 0, "Pneumothorax": 0, "Edema": 1,
        "Pneumonia": -1}))
