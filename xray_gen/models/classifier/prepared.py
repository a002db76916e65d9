"""The classifier as other models use it: a prerequisite run in a directory of theirs, then loaded."""

from __future__ import annotations

import os

from xray_gen.models.classifier.task import ClassifierTask
from xray_gen.training import loop


class PreparedClassifier:
    """The in-domain classifier a generative model declares as a prerequisite run in `directory`
    and then loads: FID features, clinical AUROC, labels of generated images. Its config is the
    classifier's `variant` on the model's own data config, so it sees the model's images."""

    def __init__(self, data_config, variant: str, num_steps: int, directory: str):
        from xray_gen.configs import classifier as classifier_configs

        cc = classifier_configs.get_config(variant)
        cc.data = data_config.copy_and_resolve_references()
        cc.train.num_steps = num_steps
        cc.train.eval_every = num_steps  # one validation at the end: Youden thresholds, AUROC in its logs
        self.config, self.directory = cc, directory
        self.task = ClassifierTask(cc)

    def prerequisite(self) -> loop.Prerequisite:
        """The run the model declares (the runner trains it before the model, once per directory)."""
        return loop.Prerequisite(os.path.basename(os.path.normpath(self.directory)), self.config, self.directory)

    def load(self):
        """(task, state): the task carries the validation Youden thresholds of the checkpoint."""
        state, _ = loop.restore_latest(self.task, self.config, self.directory)
        return self.task, state
