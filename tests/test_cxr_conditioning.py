"""CXR-IRGen conditioning: the label prompt and reference-image selection."""

import numpy as np
import pytest

from xray_gen.data.pipeline import PhantomSource
from xray_gen.data.schema import NUM_LABELS, labels_from_dict
from xray_gen.models.cxr_irgen.conditioning import NO_REFERENCE, ReferenceIndex, label_prompt, label_prompts


def L(**values):
    """Label vector from keyword names (underscores for spaces)."""
    return labels_from_dict({k.replace("_", " "): v for k, v in values.items()})


# ------------------------------------------------------------------------------------------------ prompt


def test_prompt_all_groups_in_official_order():
    labels = L(Pneumonia=-1, Cardiomegaly=1, Pleural_Effusion=1, Edema=0, Atelectasis=-1, Pneumothorax=0,
               Support_Devices=np.nan)
    # Alphabetical (official) order, not CheXpert's: atelectasis before cardiomegaly, effusion before pneumonia.
    assert label_prompt(labels) == ("A chest X ray image with cardiomegaly and pleural effusion, "
                                    "without edema and pneumothorax, and with uncertain atelectasis and pneumonia")


def test_prompt_edge_cases():
    assert label_prompt(np.full(NUM_LABELS, np.nan)) == "A chest X ray image"
    assert label_prompt(L(Edema=0, Fracture=0)) == "A chest X ray image, without edema and fracture"
    assert label_prompt(L(Lung_Opacity=-1)) == "A chest X ray image, and with uncertain lung opacity"
    assert label_prompt(L(Enlarged_Cardiomediastinum=1)) == "A chest X ray image with enlarged cardiomediastinum"
    # No Finding: a positive is said; a negative one ("without no finding") is left out.
    assert label_prompt(L(No_Finding=1, Edema=0)) == "A chest X ray image with no finding, without edema"
    assert label_prompt(L(No_Finding=0, Edema=1)) == "A chest X ray image with edema"
    # The paper's wording for the uncertain group.
    assert label_prompt(L(Edema=-1), uncertain_phrase="unclear about") == "A chest X ray image, and unclear about edema"


def test_prompt_batch_and_errors():
    batch = np.stack([L(Edema=1), L(Edema=0)])
    assert label_prompts(batch) == ["A chest X ray image with edema", "A chest X ray image, without edema"]
    with pytest.raises(ValueError, match="'Edema'"):
        label_prompt(L(Edema=0.5))
    with pytest.raises(ValueError, match="14"):
        label_prompt(np.zeros(13))
    with pytest.raises(ValueError, match="label_prompts"):
        label_prompt(batch)


# ------------------------------------------------------------------------------------------------ references


def _train_labels():
    return np.stack([
        L(Cardiomegaly=1, Edema=0),                 # 0
        L(Cardiomegaly=1, Edema=0),                 # 1  identical to 0
        L(Cardiomegaly=1, Edema=0),                 # 2  identical to 0
        L(Cardiomegaly=1, Edema=-1),                # 3  same positives as 0 (uncertain is not positive)
        L(Cardiomegaly=1),                          # 4  same positives, Edema not mentioned (NaN != 0)
        L(Pneumothorax=1, Fracture=1),              # 5  unique
        L(No_Finding=1),                            # 6  unique
    ])


def test_identical_vector_found_and_random():
    index = ReferenceIndex(_train_labels())
    rng = np.random.default_rng(0)
    got = {index.reference_for(L(Cardiomegaly=1, Edema=0), rng) for _ in range(200)}
    assert got == {0, 1, 2}  # every identical image, nothing else
    assert index.reference_for(L(Cardiomegaly=1), rng) == 4  # NaN differs from 0: exact match is row 4 only
    assert index.reference_for(L(Pneumothorax=1, Fracture=1), rng) == 5


def test_self_exclusion():
    index = ReferenceIndex(_train_labels())
    rng = np.random.default_rng(1)
    draws = [index.reference_for(L(Cardiomegaly=1, Edema=0), rng, exclude=1) for _ in range(600)]
    counts = np.bincount(draws, minlength=7)
    assert counts[1] == 0 and counts[3:].sum() == 0
    assert 200 < counts[0] < 400 and 200 < counts[2] < 400  # uniform over the other identical images
    # The only identical image is the query itself: the positive-set fallback answers, never itself.
    assert {index.reference_for(L(Cardiomegaly=1), rng, exclude=4) for _ in range(100)} == {0, 1, 2, 3}
    # A unique image excluded, nothing else with its positives: no reference.
    assert index.reference_for(L(Pneumothorax=1, Fracture=1), rng, exclude=5) is None


def test_fallback_same_positives_then_none():
    index = ReferenceIndex(_train_labels())
    rng = np.random.default_rng(2)
    query = L(Cardiomegaly=1, Edema=1)  # no identical vector; positives {Cardiomegaly, Edema}: none
    assert index.reference_for(query, rng) is None
    query = L(Cardiomegaly=1, Pleural_Effusion=0, Atelectasis=-1)  # positives {Cardiomegaly}
    got = {index.reference_for(query, rng) for _ in range(300)}
    assert got == {0, 1, 2, 3, 4}
    assert index.reference_for(query, rng, fallback=False) is None
    assert index.reference_for(L(Lung_Lesion=1), rng) is None


def test_batched_references():
    index = ReferenceIndex(_train_labels())
    rng = np.random.default_rng(3)
    queries = np.stack([L(Pneumothorax=1, Fracture=1), L(No_Finding=1), L(Lung_Lesion=1), L(No_Finding=1)])
    out = index.references_for(queries, rng, exclude=np.array([-1, -1, -1, 6]))
    np.testing.assert_array_equal(out, [5, 6, NO_REFERENCE, NO_REFERENCE])
    with pytest.raises(ValueError, match="exclude"):
        index.references_for(queries, rng, exclude=np.zeros(3))


def test_bad_labels_rejected():
    with pytest.raises(ValueError, match="N, 14"):
        ReferenceIndex(np.zeros(NUM_LABELS))
    bad = _train_labels()
    bad[2, 3] = 2.0
    with pytest.raises(ValueError, match=r"\[2, 3\].*'Lung Opacity'"):
        ReferenceIndex(bad)


def test_from_phantom_source():
    source = PhantomSource("train", size=12, resolution=32, lateral=False)
    labels = np.stack([source[i]["labels"] for i in range(len(source))])
    index = ReferenceIndex.from_source(source)
    np.testing.assert_array_equal(index.labels, labels)
    rng = np.random.default_rng(0)
    found = 0
    for i in range(len(source)):
        j = index.reference_for(labels[i], rng, exclude=i)
        if j is not None:
            found += 1
            assert j != i
            same = np.array_equal(labels[j], labels[i], equal_nan=True)
            assert same or np.array_equal(labels[j] == 1, labels[i] == 1)
    assert found >= len(source) // 2  # the phantom's label vectors repeat
    # Restricted to some indices: only those are candidates, and indices still refer to the source.
    sub = ReferenceIndex.from_source(source, indices=[3])
    assert sub.reference_for(labels[3], rng) == 3
    assert sub.reference_for(labels[3], rng, exclude=3) is None
