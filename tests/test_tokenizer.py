"""Tests for xray_gen.data.tokenizer.ReportTokenizer."""

import copy

import numpy as np
import pytest

from xray_gen.data.reports import DEID_TOKEN, clean_sentence
from xray_gen.data.schema import Study, empty_labels
from xray_gen.data.tokenizer import ReportTokenizer, train_on_studies

CORPUS = [
    "The lungs are clear.",
    "No pleural effusion or pneumothorax.",
    "Heart size is normal.",
    "Mild cardiomegaly.",
    "There is a small left pleural effusion.",
    "Nodule measures 2.3 x 1.1 cm in the right upper lobe.",
    "Dr. ___ was notified at 10:30 a.m.",
    "No acute cardiopulmonary process.",
    "The XXXX are normal.",
    "Moderate pulmonary edema with bilateral opacities.",
    "Right lower lobe consolidation concerning for pneumonia.",
    "Endotracheal tube terminates 4 cm above the carina.",
] * 4


@pytest.fixture(scope="module")
def tok():
    return ReportTokenizer.train(CORPUS, vocab_size=120)


def test_special_ids_and_vocab(tok):
    assert (tok.PAD, tok.UNK, tok.BOS, tok.EOS) == (0, 1, 2, 3)
    assert tok.id_to_piece(tok.PAD) == "<pad>" and tok.id_to_piece(tok.EOS) == "</s>"
    assert 10 < tok.vocab_size <= 120
    # The de-id placeholder is a single piece.
    assert len(tok.encode(DEID_TOKEN)) == 1 or tok.encode(DEID_TOKEN)[-1] == tok.piece_to_id(DEID_TOKEN)
    assert tok.piece_to_id(DEID_TOKEN) not in (tok.UNK,)


@pytest.mark.parametrize("sentence", CORPUS[:12] + ["Nodule measures 7.9 x 0.5 cm.", "the heart is clear"])
def test_round_trip(tok, sentence):
    ids = tok.encode(sentence)
    assert ids and all(isinstance(i, int) for i in ids)
    assert tok.UNK not in ids
    assert tok.decode(ids) == clean_sentence(sentence)


def test_decode_stops_at_eos_and_skips_pad_bos(tok):
    ids = tok.encode("mild cardiomegaly")
    noisy = [tok.BOS, tok.PAD] + ids + [tok.EOS] + tok.encode("the lungs are clear") + [tok.PAD]
    assert tok.decode(noisy) == "mild cardiomegaly"
    assert tok.decode(np.asarray(noisy, np.int32)) == "mild cardiomegaly"
    assert tok.decode([tok.EOS] + ids) == ""
    with pytest.raises(ValueError):
        tok.decode([tok.vocab_size + 5])


def test_unknown_tokens(tok):
    ids = tok.encode("zebra qwj")  # 'z', 'q', 'w', 'j' never occur in the corpus
    assert tok.UNK in ids
    assert "<unk>" in tok.decode(ids)
    # unseen numbers are not unknown: digits are always in the vocabulary
    assert tok.UNK not in tok.encode("9876 cm")


def test_hierarchical_shapes_masks(tok):
    report = "The lungs are clear. Mild cardiomegaly. No pleural effusion or pneumothorax."
    ids, mask = tok.encode_hierarchical(report, max_sentences=5, max_words=24)
    assert ids.shape == mask.shape == (5, 24)
    assert ids.dtype == np.int32 and mask.dtype == np.float32
    sent_mask = mask.any(-1)
    assert sent_mask.tolist() == [True, True, True, False, False]
    for row in range(3):
        n = int(mask[row].sum())
        assert ids[row, n - 1] == tok.EOS  # EOS is the last real token
        assert tok.EOS not in ids[row, : n - 1].tolist()
        assert (ids[row, n:] == tok.PAD).all() and (mask[row, n:] == 0).all()
    assert (ids[3:] == tok.PAD).all()
    assert tok.decode_hierarchical(ids, mask) == [
        "the lungs are clear",
        "mild cardiomegaly",
        "no pleural effusion or pneumothorax",
    ]
    assert tok.decode_hierarchical(ids) == tok.decode_hierarchical(ids, mask)
    # a list is taken as sentences as-is (not re-split)
    ids2, _ = tok.encode_hierarchical(["The lungs are clear. Mild cardiomegaly."], 2, 40)
    assert tok.decode_hierarchical(ids2) == ["the lungs are clear . mild cardiomegaly"]


def test_hierarchical_truncation_keeps_eos(tok):
    sentences = ["No pleural effusion or pneumothorax.", "The lungs are clear.", "Mild cardiomegaly."]
    full = tok.encode(sentences[0])
    max_words = 4
    assert len(full) + 1 > max_words  # the test really truncates
    ids, mask = tok.encode_hierarchical(sentences, max_sentences=2, max_words=max_words)
    assert ids.shape == (2, max_words)
    assert mask.all()  # both rows filled to the brim
    assert ids[0].tolist() == full[: max_words - 1] + [tok.EOS]
    assert ids[:, -1].tolist() == [tok.EOS, tok.EOS]
    # third sentence dropped
    assert len(tok.decode_hierarchical(ids, mask)) == 2
    ids1, mask1 = tok.encode_hierarchical(sentences, 1, 1)
    assert ids1.tolist() == [[tok.EOS]] and mask1.tolist() == [[1.0]]
    with pytest.raises(ValueError):
        tok.encode_hierarchical(sentences, 0, 4)


def test_decode_hierarchical_respects_mask(tok):
    ids, mask = tok.encode_hierarchical(["Mild cardiomegaly.", "The lungs are clear."], 3, 24)
    garbage = ids.copy()
    garbage[mask == 0] = tok.encode("edema")[0]  # e.g. sampled tokens past the mask
    assert tok.decode_hierarchical(garbage, mask) == ["mild cardiomegaly", "the lungs are clear"]
    mask[1] = 0  # a masked-out sentence is dropped even though its ids are real
    assert tok.decode_hierarchical(ids, mask) == ["mild cardiomegaly"]


def test_empty_report_hierarchical(tok):
    ids, mask = tok.encode_hierarchical("", 3, 5)
    assert (ids == tok.PAD).all() and (mask == 0).all()
    assert tok.decode_hierarchical(ids, mask) == []


def test_flat(tok):
    ids, mask = tok.encode_flat("The lungs are clear. Nodule 1.5 cm.", 64)
    n = int(mask.sum())
    assert ids.shape == mask.shape == (64,) and ids.dtype == np.int32
    assert ids[0] == tok.BOS and ids[n - 1] == tok.EOS and (ids[n:] == tok.PAD).all()
    assert tok.decode_flat(ids) == ["the lungs are clear", "nodule 1.5 cm"]
    short, short_mask = tok.encode_flat("The lungs are clear. Nodule 1.5 cm.", 5)
    assert short[0] == tok.BOS and short[-1] == tok.EOS and short_mask.all()
    assert short[1:4].tolist() == ids[1:4].tolist()


def test_save_load_identical(tok, tmp_path):
    path = tmp_path / "sub" / "reports.model"
    tok.save(path)
    assert path.read_bytes() == tok.model_proto
    assert not path.read_bytes().startswith(b"\x80")  # a model proto, not a pickle
    loaded = ReportTokenizer.load(path)
    assert loaded.vocab_size == tok.vocab_size
    report = "Nodule measures 2.3 x 1.1 cm. The XXXX are normal. zebra."
    for a, b in zip(tok.encode_hierarchical(report, 4, 12), loaded.encode_hierarchical(report, 4, 12)):
        np.testing.assert_array_equal(a, b)
    restored = copy.deepcopy(tok)  # same __getstate__/__setstate__ path as transport to grain workers
    assert restored.encode(report) == tok.encode(report)


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.model"
    with pytest.raises(FileNotFoundError, match="missing.model"):
        ReportTokenizer.load(missing)
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"this is not a sentencepiece model \x00\x01\x02")
    with pytest.raises(ValueError, match="corrupt.model"):
        ReportTokenizer.load(corrupt)
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.model"):
        ReportTokenizer.load(empty)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_training_deterministic(model_type):
    a = ReportTokenizer.train(CORPUS, vocab_size=80, model_type=model_type)
    b = ReportTokenizer.train(list(CORPUS), vocab_size=80, model_type=model_type)
    assert a.model_proto == b.model_proto
    c = ReportTokenizer.train(CORPUS[:6], vocab_size=80, model_type=model_type)
    assert c.model_proto != a.model_proto


def test_tiny_and_empty_corpus():
    tiny = ReportTokenizer.train(["No effusion.", "Lungs clear."], vocab_size=1000)
    assert tiny.decode(tiny.encode("lungs clear")) == "lungs clear"
    with pytest.raises(ValueError, match="empty corpus"):
        ReportTokenizer.train([])
    with pytest.raises(ValueError, match="empty corpus"):
        ReportTokenizer.train(["   ", "..."])
    with pytest.raises(ValueError, match="vocab_size"):
        ReportTokenizer.train(CORPUS, vocab_size=5)
    with pytest.raises(ValueError, match="model_type"):
        ReportTokenizer.train(CORPUS, model_type="wordpiece")


def _study(i, findings, impression):
    return Study(
        patient_id=f"p{i}", study_id=f"s{i}", frontal=None, lateral=None,
        findings=findings, impression=impression, labels=empty_labels(),
    )


def test_train_on_studies_uses_both_sections():
    studies = [
        _study(i, "The lungs are clear. Heart size is normal.", "1. No acute process. 2. Stable.")
        for i in range(5)
    ] + [_study(9, "", "")]
    tok = train_on_studies(studies, vocab_size=60)
    ref = ReportTokenizer.train(
        ["the lungs are clear", "heart size is normal", "no acute process", "stable"] * 5, vocab_size=60
    )
    assert tok.model_proto == ref.model_proto  # trained on exactly the cleaned sentences, in order
    assert tok.decode(tok.encode("No acute process.")) == "no acute process"
    with pytest.raises(ValueError, match="no report sentences"):
        train_on_studies([_study(1, "", "")], vocab_size=60)
