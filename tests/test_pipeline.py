"""Pipeline: model inputs from phantom studies, report tokens, the run's tokenizer, batching."""

import numpy as np
import pytest

from xray_gen.configs.default import get_default
from xray_gen.data import pipeline
from xray_gen.data.tokenizer import ReportTokenizer


def _data_config(resolution=32):
    c = get_default().data
    c.resolution = resolution
    c.phantom.train_size, c.phantom.validation_size, c.phantom.test_size = 40, 8, 8
    return c


def test_open_split_rejects_unknown_names_and_real_sources_without_manual_dir():
    c = _data_config()
    with pytest.raises(ValueError, match="valid: train, validation, test"):
        pipeline.open_split(c, "dev")
    c.source = "openi"
    with pytest.raises(ValueError, match="manual_dir"):
        pipeline.open_split(c, "train")
    c.source = "imagenet"
    with pytest.raises(ValueError, match="valid: phantom, openi"):
        pipeline.open_split(c, "train")


def test_model_inputs_resize_and_label_targets():
    source = pipeline.open_split(_data_config(resolution=48), "train")
    ex = source[0]
    out = pipeline.ToModelInputs(views=("frontal", "lateral"), resolution=32).map(ex)
    assert out["frontal"].shape == (32, 32, 1) and out["frontal"].dtype == np.uint8
    assert out["lateral"].shape == (32, 32, 1)
    labels = np.asarray(ex["labels"])
    np.testing.assert_array_equal(out["targets"][labels == 1], 1.0)
    np.testing.assert_array_equal(out["targets"][np.isnan(labels)], 0.0)
    assert "findings" not in out  # strings never reach the batch


def test_missing_view_is_a_clear_error():
    ex = pipeline.open_split(_data_config(), "train")[0]
    ex["has_lateral"] = False
    with pytest.raises(ValueError, match="has no lateral image"):
        pipeline.ToModelInputs(views=("lateral",), resolution=32).map(ex)


def test_workdir_tokenizer_trains_on_train_split_only_and_is_reused(tmp_path, monkeypatch):
    requested = []
    original = pipeline.open_split
    monkeypatch.setattr(pipeline, "open_split", lambda c, split: requested.append(split) or original(c, split))
    tok = pipeline.workdir_tokenizer(str(tmp_path), _data_config(), vocab_size=200, max_studies=40)
    assert requested == ["train"]
    assert (tmp_path / pipeline.TOKENIZER_FILE).exists()
    again = pipeline.workdir_tokenizer(str(tmp_path), _data_config(), vocab_size=999)
    assert requested == ["train"]  # loaded, not retrained
    assert again.model_proto == tok.model_proto


def test_report_inputs_batch_through_grain(tmp_path):
    data = _data_config()
    tok = pipeline.workdir_tokenizer(str(tmp_path), data, vocab_size=200, max_studies=40)
    transforms = [pipeline.ReportInputs(tok, max_sentences=6, max_words=20), pipeline.ToModelInputs(resolution=32)]
    loader = pipeline.make_loader(pipeline.open_split(data, "train"), transforms, 4, seed=0)
    batch = next(iter(loader))
    assert batch["findings_ids"].shape == (4, 6, 20) and batch["findings_ids"].dtype == np.int32
    assert batch["impression_mask"].shape == (4, 6, 20)
    first = pipeline.open_split(data, "train")
    decoded = tok.decode_hierarchical(batch["impression_ids"][0], batch["impression_mask"][0])
    assert decoded and all(isinstance(s, str) and s for s in decoded)
    assert isinstance(tok, ReportTokenizer) and len(first) == 40


def test_pad_batch_repeats_last_row():
    batch = {"x": np.arange(3)}
    padded, n = pipeline.pad_batch(batch, 5)
    assert n == 3 and padded["x"].tolist() == [0, 1, 2, 2, 2]


def test_models_train_and_evaluate_on_a_real_dataset_layout(tmp_path):
    """The classifier and the VCN run end to end on an Open-i tree (the fixture reproduces its format)."""
    import json

    import fixtures_real  # tests/ is on sys.path (pytest rootdir-relative imports)
    from xray_gen import main
    from xray_gen.configs import classifier as classifier_config
    from xray_gen.configs import vcn as vcn_config

    info = fixtures_real.write_openi(tmp_path / "openi")
    for module, name in ((classifier_config, "classifier"), (vcn_config, "vcn")):
        config = module.get_config("smoke")
        config.data.source = "openi"
        config.data.manual_dir = str(tmp_path / "openi")
        config.data.data_dir = str(tmp_path / "prepared")
        config.data.options = json.dumps({"split_file": str(info["split_file"])})
        config.train.num_steps = 3
        state = main.run(config, str(tmp_path / name), "train")
        assert int(state.step) == 3
        assert main.run(config, str(tmp_path / name), "evaluate")["split"] == "validation"


def test_builder_options_are_json_and_lateral_models_require_laterals():
    c = _data_config()
    c.source, c.options = "mimic_cxr", '{"subsets": ["p10"]}'
    assert pipeline.builder_options(c, ("frontal", "lateral")) == {"subsets": ["p10"], "require_lateral": True}
    assert pipeline.builder_options(c, ("frontal",)) == {"subsets": ["p10"]}
    c.options = "subsets=p10"
    with pytest.raises(ValueError, match="JSON object"):
        pipeline.builder_options(c, ("frontal",))
    c.source, c.options = "chestxray14", ""
    with pytest.raises(ValueError, match="frontal images only"):
        pipeline.builder_options(c, ("frontal", "lateral"))
