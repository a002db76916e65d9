"""XRayGAN training: report encoder + two-view MSCGAN + conditioned patch critics + frozen VCNs.

Phases: an optional MSE-only warm-up of stage 0, then one phase per stage (32, 64, ... px). Each
phase has its own batch size, resolution and jitted step; the encoder, both generator cascades and
every critic live in one state from the start, so a stage switch only recompiles. At stage s the
critics of stage s score (image, report) pairs (WGAN-GP), and the generator minimises
adv + 100 * L2 to the paired real image - w_vc * VC reward, where the reward is the frozen VCN's
same-patient probability for the generated frontal/lateral pair (its variables reach the step as
the loop's `frozen` argument, so no gradient reaches them and they are not baked into the program).
"""

from __future__ import annotations

import json
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from xray_gen.data import augment as aug
from xray_gen.data.pipeline import ReportInputs, ToModelInputs, make_loader, open_split, workdir_tokenizer
from xray_gen.data.schema import CHEXPERT_LABELS
from xray_gen.files import atomic_open
from xray_gen.images import write_grid
from xray_gen.models.xraygan import losses
from xray_gen.models.xraygan.networks import OneShotGenerator, PatchDiscriminator, XRayGANGenerator
from xray_gen.nn.text import FlatReportEncoder, HierarchicalReportEncoder
from xray_gen.training import loop

VIEWS = ("frontal", "lateral")


@flax.struct.dataclass
class XRayGANState:
    step: jax.Array
    rng: jax.Array
    g_params: dict  # {"encoder": ..., "generator": ...}
    d_params: dict  # {"frontal_0": ..., "lateral_0": ..., ...} one critic per view and stage
    g_opt: optax.OptState
    d_opt: optax.OptState


def stage_resolution(stage: int) -> int:
    return 32 * 2**stage


class XRayGANTask(loop.Task):
    name = "xraygan"

    def __init__(self, config, workdir: str):
        super().__init__(config)
        x = config.xraygan
        if len(x.stage_steps) < x.num_stages or len(x.batch_sizes) < x.num_stages or len(x.learning_rates) < x.num_stages:
            raise ValueError(f"xraygan.stage_steps/batch_sizes/learning_rates need {x.num_stages} entries (num_stages)")
        if stage_resolution(x.num_stages - 1) != config.data.resolution:
            raise ValueError(
                f"data.resolution={config.data.resolution} must be the last stage's, "
                f"{stage_resolution(x.num_stages - 1)} for xraygan.num_stages={x.num_stages}"
            )
        self.workdir = workdir
        self.phases = ([("warmup", 0, x.warmup_steps)] if x.warmup_steps > 0 else []) + [
            ("gan", s, x.stage_steps[s]) for s in range(x.num_stages)
        ]
        self.boundaries = np.cumsum([n for _, _, n in self.phases])
        self.tokenizer = workdir_tokenizer(workdir, config.data, x.vocab_size)
        enc_cls = HierarchicalReportEncoder if x.encoder == "hae" else FlatReportEncoder
        if x.encoder not in ("hae", "flat") or x.generator not in ("cascade", "oneshot"):
            raise ValueError("xraygan.encoder must be hae|flat and xraygan.generator cascade|oneshot")
        self.encoder = enc_cls(self.tokenizer.vocab_size, x.embed_dim, x.hidden, out_dim=x.cond_dim)
        gen_kw = dict(base_width=x.base_width, stage_width=x.stage_width, num_res=x.num_res, noise_dim=x.noise_dim)
        if x.generator == "cascade":
            self.generator = XRayGANGenerator(num_stages=x.num_stages - 1, **gen_kw)
        else:
            self.generator = {v: OneShotGenerator(resolution=config.data.resolution, **gen_kw) for v in VIEWS}
        self.critic = PatchDiscriminator(width=x.d_width, max_width=x.d_max_width)
        self.tx = optax.scale_by_adam(b1=x.b1, b2=x.b2)
        self._vcn = {}

    # ---- phases ------------------------------------------------------------------------------
    def num_steps(self) -> int:
        """`train.num_steps`, or (-1) the sum of the stages' steps and the warm-up."""
        n = int(self.config.train.num_steps)
        return int(self.boundaries[-1]) if n < 0 else n

    def phase(self, step: int) -> int:
        return int(min(np.searchsorted(self.boundaries, step, side="right"), len(self.phases) - 1))

    def phase_loader(self, phase: int):
        _, stage, _ = self.phases[phase]
        c, x = self.config, self.config.xraygan
        transforms = [
            ReportInputs(self.tokenizer, x.max_sentences, x.max_words),
            ToModelInputs.from_data_config(c.data, views=VIEWS, resolution=stage_resolution(stage)),
        ]
        return make_loader(open_split(c.data, "train"), transforms, x.batch_sizes[stage], seed=c.seed + phase,
                           worker_count=c.data.worker_count)

    def enter_phase(self, state: XRayGANState, phase: int) -> XRayGANState:
        """Fresh Adam moments for every stage (as a new optimiser per stage would be): the new
        stage's critic then starts with Adam's bias-corrected first steps instead of a ~3x larger
        one, and the previous stage's critic, no longer trained, stops drifting on old momentum."""
        return state.replace(g_opt=self.tx.init(state.g_params), d_opt=self.tx.init(state.d_params))

    # ---- frozen view-consistency networks ----------------------------------------------------
    def vcn_config(self, resolution: int) -> ml_collections.ConfigDict:
        from xray_gen.configs import vcn as vcn_configs

        vc = vcn_configs.get_config(self.config.xraygan.vcn_variant)
        vc.data = self.config.data.copy_and_resolve_references()
        vc.data.resolution = resolution
        vc.train.num_steps = self.config.xraygan.vcn_steps
        vc.train.eval_every = vc.train.num_steps  # one evaluation, at the end (AUROC in its workdir's logs)
        return vc

    def classifier(self):
        from xray_gen.models.classifier import PreparedClassifier

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
        from xray_gen.models.vcn import VCNTask

        return VCNTask(self.vcn_config(stage_resolution(stage)))

    def vcn(self, stage: int):
        """(net, frozen variables) of the stage's VCN, loaded from its workdir."""
        if stage not in self._vcn:
            task = self.vcn_task(stage)
            state, _ = loop.restore_latest(task, task.config, self.vcn_dir(stage_resolution(stage)))
            self._vcn[stage] = (task.net, {"params": state.params, "batch_stats": state.batch_stats})
        return self._vcn[stage]

    def _uses_vcn(self, phase: int) -> bool:
        x = self.config.xraygan
        return self.phases[phase][0] == "gan" and x.use_vcn and x.vc_weight != 0

    def frozen(self, phase: int = 0) -> dict:
        """{"vcn": variables of the phase's VCN} when its reward is used, else {}."""
        return {"vcn": self.vcn(self.phases[phase][1])[1]} if self._uses_vcn(phase) else {}

    def random_frozen(self, phase: int, rng) -> dict:
        if not self._uses_vcn(phase):
            return {}
        state = self.vcn_task(self.phases[phase][1]).init(rng)
        return {"vcn": {"params": state.params, "batch_stats": state.batch_stats}}

    # ---- pure functions ----------------------------------------------------------------------
    def _generate(self, g_params, batch, rng, stage: int):
        """Condition c and the generated {view: image at the stage's resolution}."""
        c = self.encoder.apply(g_params["encoder"], batch)
        images = self.generate_stages(g_params, batch, rng, stage, c)
        res = stage_resolution(stage)
        # The one-shot ablation only makes the final resolution: earlier stages see it downsampled.
        fakes = {v: images[v][-1] for v in VIEWS}
        fakes = {v: f if f.shape[1] == res else jax.image.resize(f, (f.shape[0], res, res, 1), "linear")
                 for v, f in fakes.items()}
        return c, fakes

    def init(self, rng):
        x = self.config.xraygan
        k_enc, k_gen, k_d = jax.random.split(rng, 3)
        s, w = x.max_sentences, x.max_words
        dummy = {f"{sec}_{k}": jnp.zeros((1, s, w), jnp.int32 if k == "ids" else jnp.float32)
                 for sec in ("findings", "impression") for k in ("ids", "mask")}
        enc = self.encoder.init(k_enc, dummy)
        c = jnp.zeros((1, x.cond_dim))
        z = jnp.zeros((1, x.noise_dim)) if x.noise_dim > 0 else None
        if isinstance(self.generator, dict):
            gen = {v: self.generator[v].init(jax.random.fold_in(k_gen, i), c, z) for i, v in enumerate(VIEWS)}
        else:
            gen = self.generator.init(k_gen, c, z)
        d = {}
        for stage in range(x.num_stages):
            r = stage_resolution(stage)
            for i, v in enumerate(VIEWS):
                d[f"{v}_{stage}"] = self.critic.init(jax.random.fold_in(k_d, 2 * stage + i), jnp.zeros((1, r, r, 1)), c)
        g_params = {"encoder": enc, "generator": gen}
        return XRayGANState(step=jnp.zeros((), jnp.int32), rng=jax.random.fold_in(rng, 7), g_params=g_params,
                            d_params=d, g_opt=self.tx.init(g_params), d_opt=self.tx.init(d))

    def _lr(self, step, phase: int):
        x = self.config.xraygan
        _, stage, _ = self.phases[phase]
        start = int(self.boundaries[phase - 1]) if phase > 0 else 0
        lr = jnp.float32(x.learning_rates[stage])
        if x.lr_milestones:  # fractions of the phase (official: MultiStepLR at epochs 45/70/90)
            n = self.phases[phase][2]
            passed = sum((step - start) >= int(round(f * n)) for f in x.lr_milestones)
            lr = lr * jnp.float32(x.lr_decay) ** passed
        elif x.lr_decay_every > 0:
            lr = lr * x.lr_decay ** ((step - start) // x.lr_decay_every)
        return lr

    def phase_step(self, phase: int):
        kind, stage, _ = self.phases[phase]
        x = self.config.xraygan
        use_vcn = self._uses_vcn(phase)
        vcn_net = self.vcn_task(stage).net if use_vcn else None

        def step(state: XRayGANState, frozen: dict, batch):
            rng = jax.random.fold_in(state.rng, state.step)
            k_z, k_gp = jax.random.split(rng)
            real = {v: aug.to_float(batch[v]) for v in VIEWS}
            lr = self._lr(state.step, phase)
            metrics = {"learning_rate": lr}
            d_params, d_opt = state.d_params, state.d_opt
            # One generator forward serves both updates: the critic trains on its (detached)
            # output, and the generator's gradient is pulled back through the saved VJP.
            (c, fakes), generate_vjp = jax.vjp(lambda gp_: self._generate(gp_, batch, k_z, stage), state.g_params)
            c_fixed, fakes_fixed = jax.lax.stop_gradient(c), jax.lax.stop_gradient(fakes)
            if kind == "gan":
                def d_loss_fn(dp):
                    total = 0.0
                    for i, v in enumerate(VIEWS):
                        critic = lambda img, v=v: self.critic.apply(dp[f"{v}_{stage}"], img, c_fixed)
                        gap = losses.wgan_d_loss(critic(real[v]), critic(fakes_fixed[v]))
                        gp = losses.gradient_penalty(critic, real[v], fakes_fixed[v], jax.random.fold_in(k_gp, i),
                                                     x.gp_weight)
                        total = total + gap + gp
                    return total

                d_loss, d_grads = jax.value_and_grad(d_loss_fn)(d_params)
                d_updates, d_opt = self.tx.update(d_grads, d_opt, d_params)
                d_params = jax.tree.map(lambda p, u: p - lr * u, d_params, d_updates)
                metrics["d_loss"] = d_loss

            def g_loss_fn(fakes):
                if kind == "warmup":
                    pixel = sum(losses.pixel_l2(fakes[v], real[v]) for v in VIEWS)
                    return x.pixel_weight * pixel, {"pixel": pixel}
                # The critics (just updated) see the condition as a constant: otherwise the encoder
                # could raise D(fake, c) through the critic's text pathway (which the gradient
                # penalty, taken w.r.t. the image only, does not bound) instead of through images.
                scores = [self.critic.apply(d_params[f"{v}_{stage}"], fakes[v], c_fixed) for v in VIEWS]
                p_same = None
                if use_vcn:
                    p_same = jax.nn.sigmoid(vcn_net.apply(frozen["vcn"], fakes["frontal"], fakes["lateral"], train=False))
                return losses.generator_objective(
                    scores, [fakes[v] for v in VIEWS], [real[v] for v in VIEWS], p_same,
                    adv_weight=x.adv_weight, pixel_weight=x.pixel_weight, vc_weight=x.vc_weight, vc_form=x.vc_form,
                )

            (g_loss, terms), d_fakes = jax.value_and_grad(g_loss_fn, has_aux=True)(fakes)
            (g_grads,) = generate_vjp((jnp.zeros_like(c), d_fakes))  # the loss reaches c only through the images
            g_updates, g_opt = self.tx.update(g_grads, state.g_opt, state.g_params)
            g_params = jax.tree.map(lambda p, u: p - lr * u, state.g_params, g_updates)
            metrics.update({"g_loss": g_loss, **{f"g_{k}": v for k, v in terms.items()}})
            new = state.replace(step=state.step + 1, g_params=g_params, d_params=d_params, g_opt=g_opt, d_opt=d_opt)
            return new, metrics

        return step

    def train_step(self, state, frozen, batch):
        """The first phase's step (the loop asks `phase_step` for each phase)."""
        return self.phase_step(0)(state, frozen, batch)

    def train_loader(self):
        return self.phase_loader(0)

    # ---- sampling ----------------------------------------------------------------------------
    def sample(self, state, workdir: str, report: str | None = None, report_file: str | None = None) -> dict:
        """Frontal + lateral PNGs per report into workdir/samples, a grid of this call's reports, and
        summary.json (entries of earlier calls kept, this call's replacing those with the same id).

        Without --report/--report_file, the first `sample.num_reports` test-split reports are used
        and their real images are shown beside the generated ones.
        """
        from xray_gen.data.schema import Study
        from xray_gen.models.xraygan import sampling

        c, x = self.config, self.config.xraygan
        real_pairs = {}
        if report is None and report_file is None:
            source = open_split(c.data, "test")
            items = []
            for i in range(min(len(source), c.sample.num_reports)):
                study = Study.from_example(source[i])
                items.append({"id": f"test_{i}", "findings": study.findings, "impression": study.impression})
                real_pairs[items[-1]["id"]] = [aug.to_float(np.asarray(getattr(study, v))) for v in VIEWS]
        else:
            items = sampling.load_reports(report, report_file)
        last = x.num_stages - 1
        generate = jax.jit(lambda g_params, batch, rng: self.generate_stages(g_params, batch, rng, last))
        out_dir = os.path.join(workdir, "samples")
        summary, rows = {}, []
        n_draws = c.sample.num_samples if x.noise_dim > 0 else 1
        for item in items:
            inputs, notes = sampling.encode_report(self.tokenizer, item, x.max_sentences, x.max_words)
            entry = summary[item["id"]] = {"findings": item["findings"], "impression": item["impression"], "notes": notes}
            if inputs is None:
                logging.warning("report %s skipped: %s", item["id"], "; ".join(notes))
                continue
            for n in range(n_draws):
                images = jax.device_get(generate(state.g_params, inputs, jax.random.PRNGKey(c.sample.seed + n)))
                suffix = f"_seed{n}" if n_draws > 1 else ""
                sampling.write_pair(os.path.join(out_dir, item["id"]), images["frontal"][-1][0], images["lateral"][-1][0], suffix)
                if c.sample.all_stages:
                    for s in range(len(images["frontal"]) - 1):
                        sampling.write_pair(os.path.join(out_dir, item["id"]), images["frontal"][s][0],
                                            images["lateral"][s][0], f"{suffix}_stage{s}")
                rows.append([images["frontal"][-1][0], images["lateral"][-1][0]] + real_pairs.get(item["id"], []))
            entry["files"] = sorted(os.listdir(os.path.join(out_dir, item["id"])))
            for note in notes:
                logging.info("report %s: %s", item["id"], note)
        os.makedirs(out_dir, exist_ok=True)
        if rows:
            write_grid(os.path.join(out_dir, "grid.png"), rows)
        summary_path = os.path.join(out_dir, "summary.json")
        previous = {}
        if os.path.exists(summary_path):  # earlier sampling calls into this workdir keep their entries
            try:
                with open(summary_path) as f:
                    previous = json.load(f)
            except (OSError, ValueError):
                logging.warning("%s was unreadable: rewritten with this call's reports only", summary_path)
            previous = previous if isinstance(previous, dict) else {}
        with atomic_open(summary_path) as f:
            json.dump({**previous, **summary}, f, indent=2)
        logging.info("wrote samples of %d of %d reports to %s", len(rows) // n_draws, len(items), out_dir)
        return summary

    def generate_stages(self, g_params, batch, rng, stage: int, c=None):
        """{view: [image per stage up to `stage`]} (the one-shot ablation has only the final one)."""
        c = self.encoder.apply(g_params["encoder"], batch) if c is None else c
        x = self.config.xraygan
        z = jax.random.normal(rng, (c.shape[0], x.noise_dim)) if x.noise_dim > 0 else None
        if isinstance(self.generator, dict):
            return {v: [self.generator[v].apply(g_params["generator"][v], c, z)] for v in VIEWS}
        return self.generator.apply(g_params["generator"], c, z, stage=stage)

    # ---- evaluation ---------------------------------------------------------------------------
    def final_report(self, state, workdir: str, checkpoint_step: int | None = None) -> dict:
        """Paper Tables 1/2 on `eval.split`: per view FID/KID (classifier features), SSIM to the real
        image of the same report, VC of generated / real / mismatched generated pairs, and the
        classifier's AUROC for the report's labels on generated (and real) frontals."""
        from xray_gen.evaluation import fid
        from xray_gen.evaluation.metrics import multilabel_auroc, ssim
        from xray_gen.evaluation.protocol import eval_dir as protocol_eval_dir, model_protocol, write_result_json
        from xray_gen.training.inference import predict
        from xray_gen.training.sharding import mesh_for

        c, x = self.config, self.config.xraygan
        last = x.num_stages - 1
        res = stage_resolution(last)
        transforms = [ReportInputs(self.tokenizer, x.max_sentences, x.max_words), ToModelInputs.from_data_config(c.data, views=VIEWS, resolution=res)]
        loader = make_loader(open_split(c.data, c.eval.split), transforms, c.eval.batch_size, seed=c.seed,
                             shuffle=False, num_epochs=1, drop_remainder=False)
        vcn_net, vcn_vars = self.vcn(last)
        classifier, cls_state = self.classifier().load()
        cls_vars = {"params": cls_state.params, "batch_stats": cls_state.batch_stats}

        def fn(inputs, batch):
            st, frozen = inputs
            _, fakes = self._generate(st.g_params, batch, jax.random.PRNGKey(c.sample.seed), last)
            real = {v: aug.to_float(batch[v]) for v in VIEWS}
            vc = lambda f, l: jax.nn.sigmoid(vcn_net.apply(frozen["vcn"], f, l, train=False))
            out = {"vc_generated": vc(fakes["frontal"], fakes["lateral"]), "vc_real": vc(real["frontal"], real["lateral"]),
                   "vc_mismatched": vc(fakes["frontal"], jnp.roll(fakes["lateral"], 1, axis=0)),
                   "targets": batch["targets"], "mask": batch["label_mask"]}
            for v in VIEWS:
                for kind, images in (("fake", fakes[v]), ("real", real[v])):
                    logits, feats = classifier.net.apply(frozen["classifier"], images, train=False)
                    out[f"{kind}_{v}_features"], out[f"{kind}_{v}_probs"] = feats, jax.nn.sigmoid(logits)
                out[f"fake_{v}"], out[f"real_{v}"] = fakes[v], real[v]
            return out

        frozen = {"vcn": vcn_vars, "classifier": cls_vars}  # arguments of the jitted function, not its constants
        out = predict(fn, (state, frozen), loader, mesh_for(c), c.eval.batch_size, c.eval.num_examples)
        n = len(out["targets"])
        mask = out["mask"] > 0
        metrics = {"split": c.eval.split, "num_reports": n, "resolution": res,
                   "vc": {k: float(np.mean(out[f"vc_{k}"])) for k in ("generated", "real", "mismatched")}}
        for v in VIEWS:
            if n >= 2:
                g, r = fid.FeatureStats.from_features(out[f"fake_{v}_features"]), fid.FeatureStats.from_features(out[f"real_{v}_features"])
                metrics[f"fid_{v}"] = fid.frechet_distance(g.mean, g.cov, r.mean, r.cov)
                if c.eval.get("bootstrap", 0) > 0:
                    _, lo, hi = fid.fid_bootstrap_ci(out[f"fake_{v}_features"], r, n=c.eval.bootstrap, seed=c.seed)
                    metrics[f"fid_{v}_ci"] = [lo, hi]
                metrics[f"kid_{v}"] = list(fid.kid(out[f"fake_{v}_features"], out[f"real_{v}_features"], num_subsets=20,
                                                   max_subset_size=max(2, n // 2)))
            metrics[f"ssim_{v}"] = float(np.mean(ssim(out[f"fake_{v}"], out[f"real_{v}"])))
        per_class = {}
        for kind in ("fake", "real"):
            name = "generated" if kind == "fake" else "real"
            auroc = multilabel_auroc(out["targets"], out[f"{kind}_frontal_probs"], mask, class_names=CHEXPERT_LABELS)
            metrics[f"clinical_auroc_{name}_frontal"] = auroc.pop("macro")
            per_class[f"clinical AUROC, {name} frontals"] = auroc
        if c.eval.get("inception_weights") and n >= 2:
            metrics.update(inception_metrics(c.eval.inception_weights, out, n))
        protocol = model_protocol(c, "xraygan+classifier_features", cls_state.params, n, c.eval.get("bootstrap", 0))
        result = write_result_json(os.path.join(protocol_eval_dir(workdir, checkpoint_step), f"xraygan_{c.eval.split}.json"), metrics, protocol)
        self._write_html(os.path.join(protocol_eval_dir(workdir, checkpoint_step), f"xraygan_{c.eval.split}.html"), result, out, per_class, workdir)
        return metrics

    def _write_html(self, path: str, result: dict, out: dict, per_class: dict, workdir: str) -> None:
        """The evaluation as one self-contained page: generated pairs beside the real pair of the
        same report (report text under each), metric tables, per-class AUROC bars, training curves."""
        from xray_gen.data.schema import Study
        from xray_gen.evaluation.html_report import read_curves, write_html_report

        c = self.config
        source = open_split(c.data, c.eval.split)
        samples = []
        for i in range(min(c.sample.num_reports, len(out["targets"]))):  # the loader kept the split's order
            study = Study.from_example(source[i])
            samples.append({
                "condition": f"{c.eval.split} report {i}",
                "images": [out["fake_frontal"][i], out["fake_lateral"][i], out["real_frontal"][i], out["real_lateral"][i]],
                "captions": ["generated frontal", "generated lateral", "real frontal", "real lateral"],
                "text": f"FINDINGS: {study.findings} IMPRESSION: {study.impression}",
            })
        write_html_report(path, result, title=f"XRayGAN evaluation ({c.eval.split})", samples=samples,
                          per_class=per_class, curves=read_curves(workdir, tags=["train/*"]))
        logging.info("evaluation report: %s", path)


def inception_metrics(weights_path: str, out: dict, n: int) -> dict:
    """Inception-v3 FID (pool3) and Inception Score (logits; generated and real) per view, from the
    user's converted weights; one forward pass per image gives both."""
    from xray_gen.evaluation import fid
    from xray_gen.evaluation.features import inception_extractor
    from xray_gen.evaluation.metrics import inception_score

    extractor = inception_extractor(weights_path, output="pool+logits")
    metrics = {"inception": {"extractor": extractor.name, "weights_checksum": extractor.weights_checksum,
                             "resize_policy": extractor.resize_policy, "grey_to_rgb": extractor.grey_rule}}
    splits = min(10, n)
    for v in VIEWS:
        fake, real = extractor(out[f"fake_{v}"]), extractor(out[f"real_{v}"])
        g = fid.FeatureStats.from_features(fake[:, :2048])
        r = fid.FeatureStats.from_features(real[:, :2048])
        metrics[f"inception_fid_{v}"] = fid.frechet_distance(g.mean, g.cov, r.mean, r.cov)
        metrics[f"inception_is_{v}"] = list(inception_score(fake[:, 2048:], splits=splits, from_logits=True))
        metrics[f"inception_is_real_{v}"] = list(inception_score(real[:, 2048:], splits=splits, from_logits=True))
    return metrics
