"""--labels / --labels_file parsing for label-conditioned sampling."""

import numpy as np
import pytest

from xray_gen.data.label_requests import parse_labels, read_label_file
from xray_gen.data.schema import CHEXPERT_LABELS


def idx(name):
    return CHEXPERT_LABELS.index(name)


def test_parse_names_values_and_case():
    labels = parse_labels(" cardiomegaly, Pleural_Effusion , Edema=0, Pneumonia=u, Atelectasis=-1")
    assert labels[idx("Cardiomegaly")] == 1 and labels[idx("Pleural Effusion")] == 1
    assert labels[idx("Edema")] == 0 and labels[idx("Pneumonia")] == -1 and labels[idx("Atelectasis")] == -1
    assert np.isnan(labels[idx("No Finding")])  # not mentioned
    assert np.sum(~np.isnan(labels)) == 5


def test_unknown_names_and_values_are_clear_errors():
    with pytest.raises(ValueError, match="did you mean 'Cardiomegaly'.*valid labels: No Finding"):
        parse_labels("Cardiomegally")
    with pytest.raises(ValueError, match="value '2' must be 1, 0, -1"):
        parse_labels("Edema=2")
    with pytest.raises(ValueError, match="names no label"):
        parse_labels(" , ")


def test_label_file(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("id,Cardiomegaly,edema,Pleural Effusion\na,1,0,\n,,u,1\n\n")
    ids, labels = read_label_file(str(path))
    assert ids == ["a", "row3"] and labels.shape == (2, 14)
    assert labels[0, idx("Cardiomegaly")] == 1 and labels[0, idx("Edema")] == 0 and np.isnan(labels[0, idx("Pleural Effusion")])
    assert labels[1, idx("Edema")] == -1 and labels[1, idx("Pleural Effusion")] == 1
    path.write_text("Cardiomegaly,Hernia\n1,0\n")
    with pytest.raises(ValueError, match="header, column 2: unknown label 'Hernia'"):
        read_label_file(str(path))
    path.write_text("Cardiomegaly\nyes\n")
    with pytest.raises(ValueError, match="row 2, column 'Cardiomegaly': value 'yes'"):
        read_label_file(str(path))
