"""Result files: the summary merge that every sampler's summary.json goes through."""

import json

from xray_gen.files import merge_json_summary


def test_merge_keeps_earlier_entries_and_replaces_same_keys(tmp_path):
    path = tmp_path / "samples" / "summary.json"
    merge_json_summary(str(path), {"a": 1, "b": {"x": 1}})
    merge_json_summary(str(path), {"b": {"y": 2}, "c": 3})
    assert json.loads(path.read_text()) == {"a": 1, "b": {"y": 2}, "c": 3}
    path.write_text("{not json")  # damaged: rewritten with this call's entries, no traceback
    merge_json_summary(str(path), {"d": 4})
    assert json.loads(path.read_text()) == {"d": 4}
    path.write_text("[1, 2]")  # not an object
    merge_json_summary(str(path), {"e": 5})
    assert json.loads(path.read_text()) == {"e": 5}
