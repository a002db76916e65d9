"""XRayGAN for the training loop: report encoder + two-view MSCGAN + conditioned patch critics +
frozen VCNs.

Phases (steps.Schedule): an optional MSE-only warm-up of stage 0, then one phase per stage (32, 64,
... px), each with its own batch size, resolution and jitted step (steps.make_train_step); the
encoder, both generator cascades and every critic live in one state from the start, so a stage
switch only recompiles. Prerequisite runs: the VCN of every stage resolution (the frozen VC reward,
passed to the step as the loop's `frozen` argument) and the evaluation classifier. Sampling is in
generate.py, evaluation in evaluation.py.
"""

from __future__ import annotations

import os

import ml_collections

from xray_gen.data.pipeline import ReportInputs, ToModelInputs, make_loader, open_split, workdir_tokenizer
from xray_gen.models.xraygan import networks, steps
from xray_gen.models.xraygan.steps import VIEWS, XRayGANState, stage_resolution
from xray_gen.training import loop


class XRayGANTask(loop.Task):
    name = "xraygan"

    def __init__(self, config, workdir: str):
        super().__init__(config, workdir)
        x = config.xraygan
        if len(x.stage_steps) < x.num_stages or len(x.batch_sizes) < x.num_stages or len(x.learning_rates) < x.num_stages:
            raise ValueError(f"xraygan.stage_steps/batch_sizes/learning_rates need {x.num_stages} entries (num_stages)")
        if stage_resolution(x.num_stages - 1) != config.data.resolution:
            raise ValueError(
                f"data.resolution={config.data.resolution} must be the last stage's, "
                f"{stage_resolution(x.num_stages - 1)} for xraygan.num_stages={x.num_stages}"
            )
        self.schedule = steps.Schedule.from_config(x)
        self.tokenizer = workdir_tokenizer(workdir, config.data, x.vocab_size)
        self.nets = networks.build_networks(config, self.tokenizer.vocab_size)
        self.tx = networks.optimizer(x)
        self._vcn = {}

    @property
    def phases(self):
        return self.schedule.phases

    @property
    def boundaries(self):
        return self.schedule.boundaries

    # ---- phases ------------------------------------------------------------------------------
    def num_steps(self) -> int:
        """`train.num_steps`, or (-1) the sum of the stages' steps and the warm-up."""
        n = int(self.config.train.num_steps)
        return self.schedule.boundaries[-1] if n < 0 else n

    def phase(self, step: int) -> int:
        return self.schedule.phase_at(step)

    def phase_loader(self, phase: int):
        _, stage, _ = self.phases[phase]
        c, x = self.config, self.config.xraygan
        transforms = [
            ReportInputs(self.tokenizer, x.max_sentences, x.max_words),
            ToModelInputs.from_data_config(c.data, views=VIEWS, resolution=stage_resolution(stage)),
        ]
        return make_loader(open_split(c.data, "train"), transforms, x.batch_sizes[stage], seed=c.seed + phase,
                           worker_count=c.data.worker_count)

    def train_loader(self):
        return self.phase_loader(0)

    def enter_phase(self, state: XRayGANState, phase: int) -> XRayGANState:
        """Fresh Adam moments for every stage (as a new optimiser per stage would be): the new
        stage's critic then starts with Adam's bias-corrected first steps instead of a ~3x larger
        one, and the previous stage's critic, no longer trained, stops drifting on old momentum."""
        return state.replace(g_opt=self.tx.init(state.g_params), d_opt=self.tx.init(state.d_params))

    # ---- prerequisite runs: the frozen VCNs and the evaluation classifier ------------------------
    def vcn_config(self, resolution: int) -> ml_collections.ConfigDict:
        from xray_gen.configs import vcn as vcn_configs

        vc = vcn_configs.get_config(self.config.xraygan.vcn_variant)
        vc.data = self.config.data.copy_and_resolve_references()
        vc.data.resolution = resolution
        vc.train.num_steps = self.config.xraygan.vcn_steps
        vc.train.eval_every = vc.train.num_steps  # one evaluation, at the end (AUROC in its workdir's logs)
        return vc

    def classifier(self):
        from xray_gen.models.classifier.prepared import PreparedClassifier

        x = self.config.xraygan
        return PreparedClassifier(self.config.data, x.classifier_variant, x.classifier_steps, self.classifier_dir())

    def prerequisites(self) -> list[loop.Prerequisite]:
        """What training and evaluation lean on: the VCN of every stage resolution (frozen reward;
        also the evaluation's VC score, so even `wo_vcn` has them) and the in-domain classifier at
        the final resolution (FID features, clinical AUROC)."""
        vcns = [loop.Prerequisite(f"vcn_{res}", self.vcn_config(res), self.vcn_dir(res))
                for res in map(stage_resolution, range(self.config.xraygan.num_stages))]
        return vcns + [self.classifier().prerequisite()]

    def _prepared_root(self) -> str:
        """Where the frozen VCNs and the evaluation classifier live: `xraygan.prepared_dir` lets
        ablation runs share one set (same reward, same FID extractor), else the run's workdir."""
        return self.config.xraygan.get("prepared_dir") or self.workdir

    def classifier_dir(self) -> str:
        return os.path.join(self._prepared_root(), f"classifier_{self.config.data.resolution}")

    def vcn_dir(self, resolution: int) -> str:
        return os.path.join(self._prepared_root(), f"vcn_{resolution}")

    def vcn_task(self, stage: int):
        from xray_gen.models.vcn.task import VCNTask

        return VCNTask(self.vcn_config(stage_resolution(stage)))

    def vcn(self, stage: int):
        """(net, frozen variables) of the stage's VCN, loaded from its workdir."""
        if stage not in self._vcn:
            task = self.vcn_task(stage)
            state, _ = loop.restore_latest(task, task.config, self.vcn_dir(stage_resolution(stage)))
            self._vcn[stage] = (task.net, {"params": state.params, "batch_stats": state.batch_stats})
        return self._vcn[stage]

    def frozen(self, phase: int = 0) -> dict:
        """{"vcn": variables of the phase's VCN} when its reward is used, else {}."""
        if not steps.uses_vcn(self.config.xraygan, self.schedule, phase):
            return {}
        return {"vcn": self.vcn(self.phases[phase][1])[1]}

    def random_frozen(self, phase: int, rng) -> dict:
        if not steps.uses_vcn(self.config.xraygan, self.schedule, phase):
            return {}
        state = self.vcn_task(self.phases[phase][1]).init(rng)
        return {"vcn": {"params": state.params, "batch_stats": state.batch_stats}}

    # ---- the pure functions (steps.py) --------------------------------------------------------
    def init(self, rng) -> XRayGANState:
        return steps.init_state(self.nets, self.config.xraygan, rng, self.tx)

    def phase_step(self, phase: int):
        uses_vcn = steps.uses_vcn(self.config.xraygan, self.schedule, phase)
        vcn_net = self.vcn_task(self.phases[phase][1]).net if uses_vcn else None
        return steps.make_train_step(self.nets, self.config, self.schedule, phase, self.tx, vcn_net)

    def train_step(self, state, frozen, batch):
        """The first phase's step (the loop asks `phase_step` for each phase)."""
        return self.phase_step(0)(state, frozen, batch)

    def generate_stages(self, g_params, batch, rng, stage: int):
        """{view: [image per stage up to `stage`]} (steps.generate_stages with this run's networks)."""
        return steps.generate_stages(self.nets, self.config.xraygan, g_params, batch, rng, stage)

    # ---- sampling and evaluation -------------------------------------------------------------
    def sample(self, state, workdir: str, report: str | None = None, report_file: str | None = None) -> dict:
        from xray_gen.models.xraygan import generate

        return generate.sample(self, state, workdir, report=report, report_file=report_file)

    def final_report(self, state, workdir: str, checkpoint_step: int | None = None) -> dict:
        from xray_gen.models.xraygan import evaluation

        return evaluation.final_report(self, state, workdir, checkpoint_step)
