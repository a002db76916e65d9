"""Report metrics (BLEU, CIDEr-D, ROUGE-L, clinical label agreement, bootstrap) on hand-checkable pairs."""

import json
import math

import numpy as np
import pytest

from xray_gen.data.schema import CHEXPERT_LABELS, labels_from_dict
from xray_gen.evaluation import text_metrics as tm

CORPUS = [
    "The heart is normal in size.",
    "There is a small left pleural effusion.",
    "No focal consolidation or pneumothorax is seen.",
]
# Reference / generated reports for the label tests.
REFS = ["Cardiomegaly and mild pulmonary edema.", "Possible small left effusion.", "No pleural effusion."]
GENS = ["Cardiomegaly. No edema.", "Small left pleural effusion.", "No pleural effusion."]


def test_tokenize_lowercases_and_drops_coco_punctuation():
    assert tm.tokenize("The heart is NOT enlarged. Effusion (1.5 cm), patient's x-ray; don't!") == [
        "the", "heart", "is", "not", "enlarged", "effusion", "1.5", "cm", "patient", "'s", "x-ray",
        "do", "n't"]
    assert tm.tokenize("") == [] and tm.tokenize(" ... -- ") == []


def test_identical_corpus_scores_one_and_cider_ten():
    m = tm.nlg_metrics(CORPUS, CORPUS)
    for k in range(1, 5):
        assert m[f"bleu_{k}"] == pytest.approx(1.0, abs=1e-6)
    assert m["rouge_l"] == pytest.approx(1.0)
    # Each report has, at every n, an n-gram absent from the other references: cosine 1 per n, x10.
    assert m["cider"] == pytest.approx(10.0, abs=1e-6)


def test_disjoint_corpus_scores_zero():
    m = tm.nlg_metrics(["alpha beta gamma delta", "epsilon zeta eta theta"],
                       ["one two three four", "five six seven eight"])
    for k in range(1, 5):
        assert m[f"bleu_{k}"] == pytest.approx(0.0, abs=1e-6)
    assert m["cider"] == 0.0 and m["rouge_l"] == 0.0


def test_bleu_and_rouge_by_hand():
    # hyp: the heart is normal (4 tokens); ref: the heart size is normal (5 tokens)
    # unigrams 4/4 match; bigrams {the heart, is normal} of 3 match; no trigram matches;
    # brevity penalty exp(1 - 5/4). LCS = 4: P = 1, R = 4/5, ROUGE-L (beta 1.2) = 2.44 * 0.8 / (0.8 + 1.44).
    m = tm.nlg_metrics(["The heart is normal."], ["The heart size is normal."])
    bp = math.exp(1 - 5 / 4)
    assert m["bleu_1"] == pytest.approx(1.0 * bp, rel=1e-6)
    assert m["bleu_2"] == pytest.approx(math.sqrt(1.0 * 2 / 3) * bp, rel=1e-6)
    assert m["bleu_3"] < 1e-4 and m["bleu_4"] < 1e-4
    assert m["rouge_l"] == pytest.approx(2.44 * 0.8 / (0.8 + 1.44))
    assert m["cider"] == 0.0  # one pair: every idf is log(1/1) = 0


def test_cider_identical_beats_shuffled():
    identical = tm.nlg_metrics(CORPUS, CORPUS)["cider"]
    shuffled = tm.nlg_metrics(CORPUS[1:] + CORPUS[:1], CORPUS)["cider"]
    assert 0.0 <= shuffled < 1.0 < identical


def test_several_references_take_the_best_match():
    m = tm.nlg_metrics(["The heart is normal."], [["Lungs are clear.", "The heart is normal."]])
    assert m["bleu_4"] == pytest.approx(1.0, abs=1e-6) and m["rouge_l"] == pytest.approx(1.0)


def test_matches_pycocoevalcap_scorers():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gens = ["The heart is normal.", "Small left effusion.", "No pneumothorax is seen.", "Mild edema."]
    refs = [CORPUS[0], CORPUS[1], CORPUS[2], "Mild pulmonary edema, no effusion."]
    res = {i: [" ".join(tm.tokenize(g))] for i, g in enumerate(gens)}
    gts = {i: [" ".join(tm.tokenize(r))] for i, r in enumerate(refs)}
    m = tm.nlg_metrics(gens, refs)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [m[f"bleu_{k}"] for k in range(1, 5)] == pytest.approx(bleu)
    assert m["cider"] == pytest.approx(Cider().compute_score(gts, res)[0])
    assert m["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0])


def test_label_agreement_negated_uncertain_multi_finding():
    # refs: {Cardiomegaly, Edema}, {Effusion uncertain}, {No Finding (effusion negated)}
    # gens: {Cardiomegaly; edema negated}, {Effusion}, {No Finding}
    r = tm.label_agreement(GENS, REFS)  # U-Ones: TP = 3 (cardiomegaly, effusion, no finding), FN = 1 (edema)
    assert r["uncertain_as_positive"] is True
    assert r["micro"] == pytest.approx({"precision": 1.0, "recall": 0.75, "f1": 6 / 7})
    pc = r["per_class"]
    assert pc["Edema"] == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 0}
    assert pc["Pleural Effusion"]["f1"] == 1.0 and pc["Cardiomegaly"]["f1"] == 1.0
    assert pc["No Finding"]["f1"] == 1.0 and pc["Pneumothorax"]["f1"] is None
    assert r["macro"]["f1"] == pytest.approx(0.75)  # mean over the 4 classes with a defined F1
    assert r["exact_match"] == pytest.approx(2 / 3)  # pair 1 differs on edema
    assert r["exact_match_raw"] == pytest.approx(1 / 3)  # pair 2: -1 vs 1 for effusion
    # U-Zeros: the possible effusion is not positive, the generated one becomes a false positive.
    r0 = tm.label_agreement(GENS, REFS, uncertain_as_positive=False)
    assert r0["micro"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert r0["per_class"]["Pleural Effusion"]["f1"] == 0.0


def test_report_metrics_with_conditioning_labels_and_json():
    cond = np.stack([labels_from_dict({"Cardiomegaly": 1, "Edema": 1}),
                     labels_from_dict({"Pleural Effusion": 1}),
                     labels_from_dict({"No Finding": 1, "Pleural Effusion": 0})])
    out = tm.report_metrics(GENS, REFS, labels=cond, n_bootstrap=0)
    assert out["n_reports"] == 3 and out["n_empty_generated"] == 0 and "ci" not in out
    assert out["clinical"]["micro"]["f1"] == pytest.approx(6 / 7)
    assert out["clinical_vs_labels"]["micro"]["f1"] == pytest.approx(6 / 7)
    assert out["clinical_vs_labels"]["exact_match"] == pytest.approx(2 / 3)
    assert set(out["clinical"]["per_class"]) == set(CHEXPERT_LABELS)
    json.dumps(out, allow_nan=False)
    # label arrays accepted directly by label_agreement too
    assert tm.label_agreement(cond, cond)["micro"]["f1"] == 1.0


def test_empty_generated_report_counted_and_scored_empty():
    out = tm.report_metrics(["", "The heart is normal."], ["No acute findings.", "The heart is normal."],
                            n_bootstrap=0)
    assert out["n_empty_generated"] == 1
    assert out["rouge_l"] == pytest.approx(0.5)  # 0 for the empty one, 1 for the identical one
    # 4 of 4 generated unigrams match; brevity penalty from 4 generated vs 3 + 4 reference tokens
    assert out["bleu_1"] == pytest.approx(math.exp(1 - 7 / 4), rel=1e-6)
    assert out["clinical"]["per_class"]["No Finding"]["support"] == 2


def test_bootstrap_intervals():
    out = tm.report_metrics(CORPUS, CORPUS, n_bootstrap=20, seed=1)
    ci = out["ci"]
    assert ci["n_bootstrap"] == 20 and ci["alpha"] == 0.05
    assert ci["bleu_4"] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert ci["rouge_l"] == pytest.approx([1.0, 1.0])
    assert 0.0 <= ci["cider"][0] <= ci["cider"][1] <= 10.0 + 1e-6
    assert ci["clinical_micro_f1"] == [1.0, 1.0]
    again = tm.report_metrics(CORPUS, CORPUS, n_bootstrap=20, seed=1)["ci"]
    assert again == ci
    json.dumps(out, allow_nan=False)


def test_errors():
    with pytest.raises(ValueError, match="generated has 3 reports but references has 2"):
        tm.report_metrics(GENS, REFS[:2])
    with pytest.raises(ValueError, match="no reports"):
        tm.report_metrics([], [])
    with pytest.raises(ValueError, match=r"references\[1\] must be a string or a non-empty list"):
        tm.nlg_metrics(["a", "b"], ["a", []])
    with pytest.raises(TypeError, match=r"generated\[0\] is a int"):
        tm.nlg_metrics([3], ["a"])
    with pytest.raises(TypeError, match="generated must be a list"):
        tm.nlg_metrics("a report", ["a"])
    with pytest.raises(ValueError, match=r"labels must have shape \(3, 14\)"):
        tm.report_metrics(GENS, REFS, labels=np.zeros((3, 13)), n_bootstrap=0)
    with pytest.raises(ValueError, match=r"found \[2.0\]"):
        tm.report_metrics(GENS, REFS, labels=np.full((3, 14), 2.0), n_bootstrap=0)
    with pytest.raises(ValueError, match="n_bootstrap"):
        tm.report_metrics(GENS, REFS, n_bootstrap=-1)
