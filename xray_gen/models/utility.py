"""Utility of synthetic data: classifiers trained with generated images, tested on REAL ones.

- Augmentation (EMIXER Table 1, scaled down; `augmentation_experiment`): real + N generated
  images against the real-only evaluation classifier.
- GAN-train (PGGAN Table 2; `gan_train`): a classifier trained on a synthetic archive only.

Both train the project's classifier (resumably, in their own directories) and score it on the real
test split; the tables that lay the numbers out are in `xray_gen.evaluation.synthetic`.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np

from xray_gen.data.archive_source import LABELS_FILE, write_archive
from xray_gen.data.pipeline import open_split
from xray_gen.data.schema import CHEXPERT_LABELS
from xray_gen.evaluation.metrics import bootstrap_ci, multilabel_auroc
from xray_gen.evaluation.protocol import to_jsonable
from xray_gen.files import atomic_open
from xray_gen.models.classifier.task import ClassifierTask
from xray_gen.training import loop

# What the augmentation table measures (written beside its rows).
AUGMENTATION_PROTOCOL = (
    "The baseline is the run's evaluation classifier (trained on the real train split). For each size N, N "
    "generated images with the label vectors that conditioned them form a synthetic archive; a classifier with "
    "the same config and number of steps trains on real + archive (data.synthetic_dir) and both are scored on the "
    "real test split: macro AUROC (per class too) and accuracy (probability >= 0.5 against the binarised labels, "
    "over the labelled entries). Equal steps make it a same-compute comparison; the paper trains each classifier "
    "on its own (larger) data.")


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
            "rows": rows, "protocol": AUGMENTATION_PROTOCOL}


def gan_train(archive_dir: str, real_data_config, classifier_config, workdir: str) -> dict:
    """Trains the classifier on the synthetic archive only and scores it on the REAL test split.

    The classifier (config `classifier_config`, e.g. configs/classifier.py) trains with
    data.source='archive' on a patient-level stratified train/validation split of the archive
    (its periodic validation, plateau rule and thresholds use the archive's validation split) in
    `workdir/gan_train` (resumable). `real_data_config` (a `data` ConfigDict, or a config holding
    one) names the real dataset; images are resized to the classifier's resolution.
    """
    real_data = real_data_config.data if "data" in real_data_config else real_data_config
    config = copy.deepcopy(classifier_config)
    with config.unlocked():
        config.data.source = "archive"
        config.data.manual_dir = str(archive_dir)
        config.eval.split = "validation"
    run_dir = os.path.join(workdir, "gan_train")
    task = ClassifierTask(config, run_dir)
    state = loop.train(task, config, run_dir)

    test_config = copy.deepcopy(config)
    with test_config.unlocked():
        test_config.data = copy.deepcopy(real_data)
        test_config.data.resolution = config.data.resolution  # the network's input size
    tester = ClassifierTask(test_config, run_dir)
    out = tester.scores(state, "test")
    mask = out["mask"] > 0
    auroc = multilabel_auroc(out["targets"], out["probs"], mask, class_names=CHEXPERT_LABELS)
    n_boot = int(config.eval.get("bootstrap", 0))
    ci = (bootstrap_ci(lambda t, p, m: multilabel_auroc(t, p, m)["macro"], out["targets"], out["probs"], mask,
                       n=n_boot) if n_boot else (auroc["macro"], None, None))

    train_src, val_src = (open_split(config.data, s, views=("frontal",)) for s in ("train", "validation"))
    result = {
        "auroc": auroc, "macro_auroc": auroc["macro"], "macro_auroc_ci95": [ci[1], ci[2]],
        "num_test": int(len(out["probs"])), "test_source": f"{real_data.source}/test",
        "archive": {"directory": str(archive_dir), "size": train_src.archive_size,
                    "train_size": len(train_src), "validation_size": len(val_src),
                    "train_patients": int(len(np.unique(train_src.patient_ids))),
                    "validation_patients": int(len(np.unique(val_src.patient_ids)))},
        "train_steps": int(np.asarray(state.step)),
    }
    with atomic_open(os.path.join(run_dir, "gan_train.json")) as f:
        json.dump(to_jsonable(result), f, indent=2, allow_nan=False)
    return to_jsonable(result)
