"""Augmentation experiment (EMIXER Table 1, scaled down): does adding generated images to the real
training data improve a classifier tested on held-out REAL images?

The baseline is the run's evaluation classifier (trained on the real train split). For each size
N in the list, N generated images with the label vectors that conditioned them form a synthetic
archive (`archive_source.write_archive`); a classifier with the same config and number of steps
trains on real + archive (`data.synthetic_dir`, resumable in its own directory) and both are
scored on the real test split: macro AUROC (per class too) and accuracy (probability >= 0.5
against the binarised labels, over the labelled entries). Equal steps make it a same-compute
comparison; the paper trains each classifier on its own (larger) data.
"""

from __future__ import annotations

import copy
import os

import numpy as np

from xray_gen.data.schema import CHEXPERT_LABELS
from xray_gen.evaluation.metrics import multilabel_auroc


def accuracy(targets: np.ndarray, probs: np.ndarray, mask: np.ndarray) -> float:
    """Share of labelled (entry, class) pairs where (prob >= 0.5) equals the binarised label."""
    m = np.asarray(mask) > 0
    return float(np.mean(((np.asarray(probs) >= 0.5) == (np.asarray(targets) > 0.5))[m])) if m.any() else float("nan")


def classifier_scores(task, state) -> dict:
    """Macro/per-class AUROC and accuracy of a trained ClassifierTask state on the real test split."""
    out = task.scores(state, "test")
    auroc = multilabel_auroc(out["targets"], out["probs"], out["mask"] > 0, class_names=CHEXPERT_LABELS)
    return {"macro_auroc": auroc.pop("macro"), "accuracy": accuracy(out["targets"], out["probs"], out["mask"]),
            "auroc": auroc, "num_test": int(len(out["probs"]))}


def augmented_classifier(classifier_config, synthetic_dir: str, run_dir: str):
    """(task, state) of the classifier config trained on its real train split + the archive."""
    from xray_gen.models.classifier import ClassifierTask
    from xray_gen.training import loop

    config = copy.deepcopy(classifier_config)
    with config.unlocked():
        config.data.synthetic_dir = str(synthetic_dir)
    task = ClassifierTask(config, run_dir)
    return task, loop.train(task, config, run_dir)


def augmentation_experiment(classifier_config, baseline_state, generate, sizes, workdir: str) -> dict:
    """Table rows for the real-only baseline and each real + N synthetic classifier.

    generate(n) -> (images uint8 (n, H, W, 1), labels (n, 14) 0/1/NaN): n generated images and
    the labels that conditioned them. Archives and classifiers live under `workdir/aug_<n>/`.
    """
    from xray_gen.data.archive_source import LABELS_FILE, write_archive
    from xray_gen.data.pipeline import open_split
    from xray_gen.models.classifier import ClassifierTask

    real_config = copy.deepcopy(classifier_config)
    with real_config.unlocked():
        real_config.data.synthetic_dir = ""
    num_real = len(open_split(real_config.data, "train", views=("frontal",)))
    rows = [{"dataset": "real", "num_real": num_real, "num_synthetic": 0,
             **classifier_scores(ClassifierTask(real_config), baseline_state)}]
    for n in sizes:
        run = os.path.join(workdir, f"aug_{int(n)}")
        archive = os.path.join(run, "synthetic")
        if not os.path.exists(os.path.join(archive, LABELS_FILE)):  # written last: a finished archive
            images, labels = generate(int(n))
            write_archive(archive, images, labels)
        task, state = augmented_classifier(classifier_config, archive, os.path.join(run, "classifier"))
        rows.append({"dataset": f"real + {int(n)} synthetic", "num_real": num_real, "num_synthetic": int(n),
                     **classifier_scores(task, state)})
    return {"columns": ["dataset", "num_real", "num_synthetic", "macro_auroc", "accuracy"],
            "rows": rows, "protocol": __doc__.split("\n\n")[1].replace("\n", " ")}
