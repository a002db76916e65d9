"""Our jitted training steps against the official PyTorch code, side by side on this machine.

  python benchmarks/compare_official.py --xraygan_repo=../XRayGAN --pggan_repo=../CXR_PGGAN \\
      --biggan_repo=../BigGAN-PyTorch                       # + diffusers from pip for the U-Net row
  python benchmarks/compare_official.py --pairs=pggan_32,sd_unet --repeats=5
  python benchmarks/compare_official.py --quick ...         # tiny batches: checks the harness only

Each pair builds the official model at the stated architecture and batch from the user's own
checkout (imported from it at run time through sys.path; nothing of it is copied here), times its
training iteration with torch on the CPU (threads = cores), then builds OUR equivalent step at the
same architecture and batch, jitted as the training loop does, and times it right after, so both
run under the same conditions. Rows (from issue 8):

| pair | official | ours | item |
|---|---|---|---|
| xraygan_32 | UCSD-AI4H/XRayGAN stage 0, 32 px, batch 96: D+G steps for both views + VC step | XRayGANTask ('official') phase gan_32 | report |
| xraygan_64 | the same at stage 1, 64 px, batch 12 | phase gan_64 | report |
| pggan_32 | BradSegal/CXR_PGGAN at 32 px inside the fade-in, batch 4: D step + G step + EMA | PGGANTask ('official') level 32px at its fade-in start | image |
| biggan_128 | ajbrock/BigGAN-PyTorch 128 px ch64 (shared, hier, attention 64), 2 D steps of 4 + G step of 4 + EMA | EmixerTask at 128 px ch64 (report parts as small as the model allows) | generated image |
| sd_unet | diffusers UNet2DConditionModel (64,128,256,256) on 32x32x4 latents, batch 8, epsilon MSE + Adam | xray_gen.nn.unet2d.UNet2DConditionModel, same config | latent |

The target ratio (ours / official items per second) is 1.5x where the official step runs under
60 % of the machine's fp32 matmul peak and 1.2x above; the peak is a 1024^3 torch matmul measured
at start (`--peak_flops` to declare one instead) and the official step's FLOPs are counted by
torch's flop formulas over one step (matmuls, convolutions, attention; forward and backward).
A pair whose repository (or diffusers, or torch) is missing is a row saying so.

Shims for running old code on current CPU torch are applied at import, never by editing files:
a stand-in `torchvision` when the installed one cannot load (ResNet-18 built here for XRayGAN's
VCN; everything else raises if used), stubs for `efficientnet_pytorch` and `pytorch_lightning`
(LightningModule as a plain nn.Module), CXR_PGGAN's package imported under its internal name
`GAN`, and the gradient penalty given the discriminator its training_step forgets to pass.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import tempfile
import time
import types
from typing import Any, Callable

try:  # run as `python benchmarks/compare_official.py` or imported as `benchmarks.compare_official`
    from benchmarks import common
except ImportError:  # pragma: no cover
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # type: ignore

UTILISATION_THRESHOLD = 0.6  # of the fp32 matmul peak: below it the reference leaves room, so ask more
TARGET_BELOW, TARGET_ABOVE = 1.5, 1.2


@dataclasses.dataclass(frozen=True)
class Pair:
    name: str
    reference: str  # what the official side is, in words
    ours: str
    unit: str  # what one item is
    batch: int  # items per training step, both sides
    repo_flag: str | None  # the --flag naming the checkout; None: a pip package (diffusers)
    marker: tuple[str, ...] = ()  # files that must exist in the checkout
    quick_batch: int = 2


XRAYGAN_FILES = ("models/Encoder.py", "models/Decoder.py", "models/Discriminator.py", "config/Openi_XrayGAN.json")
PAIRS = (
    Pair("xraygan_32", "XRayGAN official, stage 0 (32 px), D+G both views + VC", "XRayGANTask gan_32",
         "reports", 96, "xraygan_repo", XRAYGAN_FILES),
    Pair("xraygan_64", "XRayGAN official, stage 1 (64 px), D+G both views + VC", "XRayGANTask gan_64",
         "reports", 12, "xraygan_repo", XRAYGAN_FILES),
    Pair("pggan_32", "CXR_PGGAN 32 px fade-in", "PGGANTask 32px fade-in", "images", 4, "pggan_repo",
         ("PGGAN/network.py", "PGGAN/utility.py", "PGGAN/custom_layers.py")),
    Pair("biggan_128", "BigGAN-PyTorch 128 px ch64", "EmixerTask 128 px ch64", "images", 4, "biggan_repo",
         ("BigGAN.py", "layers.py", "train_fns.py", "utils.py")),
    Pair("sd_unet", "diffusers UNet2DConditionModel (64,128,256,256)", "unet2d (64,128,256,256)", "latents", 8,
         None),
)
PAIR_NAMES = tuple(p.name for p in PAIRS)


# ---- pure logic: targets, rows, the table (tested without torch or the repos) ----------------
def target_ratio(reference_utilisation: float | None, threshold: float = UTILISATION_THRESHOLD) -> float:
    """1.5x where the reference runs under `threshold` of the peak, 1.2x at or above it; the stricter
    1.5x when its utilisation is unknown (no FLOP count)."""
    if reference_utilisation is None or reference_utilisation < threshold:
        return TARGET_BELOW
    return TARGET_ABOVE


def repo_problem(pair: Pair, repo: str | None) -> str | None:
    """Why `pair` cannot run from checkout `repo` (None: it can)."""
    if pair.repo_flag is None:
        return None if importlib.util.find_spec("diffusers") else "diffusers is not installed (pip install diffusers)"
    if not repo:
        return f"--{pair.repo_flag} not given"
    if not os.path.isdir(repo):
        return f"--{pair.repo_flag}={repo!r} is not a directory"
    missing = [m for m in pair.marker if not os.path.isfile(os.path.join(repo, m))]
    if missing:
        return f"--{pair.repo_flag}={repo!r} lacks {', '.join(missing)}: not the expected checkout"
    return None


def skipped_row(pair: Pair, reason: str) -> dict[str, Any]:
    return {"pair": pair.name, "reference": pair.reference, "ours": pair.ours, "unit": pair.unit, "batch": pair.batch,
            "status": "skipped", "note": reason}


def compare_row(pair: Pair, batch: int, reference: dict, ours: dict, peak_flops: float | None) -> dict[str, Any]:
    """One table row from the two sides' step timings (`step_s` median seconds per step, `flops`
    per step or None): items/s, the ratio ours/reference, the target and whether it is met."""
    ref_rate = batch / reference["step_s"]
    our_rate = batch / ours["step_s"]

    def util(side):
        return side["flops"] / side["step_s"] / peak_flops if side.get("flops") and peak_flops else None

    ref_util = util(reference)
    target = target_ratio(ref_util)
    ratio = our_rate / ref_rate
    return {
        "pair": pair.name, "reference": pair.reference, "ours": pair.ours, "unit": pair.unit, "batch": batch,
        "status": "measured",
        "reference_items_per_s": ref_rate,
        "ours_items_per_s": our_rate,
        "ratio": ratio,
        "target_ratio": target,
        "met": ratio >= target,
        "reference_utilisation": ref_util,
        "ours_utilisation": util(ours),
        "reference_step_ms": 1e3 * reference["step_s"],
        "ours_step_ms": 1e3 * ours["step_s"],
        "reference_gflops_per_step": reference["flops"] / 1e9 if reference.get("flops") else None,
        "ours_gflops_per_step": ours["flops"] / 1e9 if ours.get("flops") else None,
    }


TABLE_COLUMNS = ("pair", "unit", "batch", "reference_items_per_s", "ours_items_per_s", "ratio", "target_ratio", "met",
                 "reference_utilisation", "ours_utilisation", "note")


def table(rows) -> str:
    return common.markdown_table(list(rows), list(TABLE_COLUMNS))


def select_pairs(spec: str | None) -> list[Pair]:
    if not spec:
        return list(PAIRS)
    names = common.parse_csv(spec)
    unknown = [n for n in names if n not in PAIR_NAMES]
    if unknown:
        raise ValueError(f"unknown pair(s) {', '.join(unknown)}; valid: {', '.join(PAIR_NAMES)}")
    return [p for p in PAIRS if p.name in names]


# ---- running official code from a checkout ---------------------------------------------------
def _top_level_names(repo: str) -> set[str]:
    names = set()
    for entry in os.listdir(repo):
        if entry.endswith(".py"):
            names.add(entry[:-3])
        elif os.path.isfile(os.path.join(repo, entry, "__init__.py")):
            names.add(entry)
    return names


@contextlib.contextmanager
def official_path(repo: str, aliases: dict[str, str] | None = None):
    """Imports from `repo` (first on sys.path) without leaking its top-level names (`models`,
    `utils`, `layers`, ...) into later pairs or hiding modules of the same name that were loaded
    before; `aliases` maps a name the code imports to a package of the checkout (CXR_PGGAN's `GAN`)."""
    repo = os.path.abspath(repo)
    names = _top_level_names(repo) | set(aliases or {})
    owned = lambda m: m.split(".")[0] in names  # noqa: E731
    saved = {m: sys.modules.pop(m) for m in list(sys.modules) if owned(m)}
    sys.path.insert(0, repo)
    try:
        with shims():
            for alias, package in (aliases or {}).items():
                sys.modules[alias] = importlib.import_module(package)
            yield
    finally:
        sys.path.remove(repo)
        for m in [m for m in sys.modules if owned(m)]:
            del sys.modules[m]
        sys.modules.update(saved)


class _Unavailable:
    """Stands for a torchvision/efficientnet/lightning feature the timed steps never use."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} is a compare_official.py stand-in; the timed step should not use it")


class _StubModule(types.ModuleType):
    """A package any attribute of which is an `_Unavailable` subclass (imports succeed; use fails)."""

    __path__: list = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (_Unavailable,), {})
        setattr(self, name, cls)
        return cls


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]):
        self.roots = roots

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def _resnet18_module():
    """ResNet-18 (He et al.) as torchvision lays it out: conv1, bn1, relu, maxpool, layer1-4,
    avgpool, fc. XRayGAN's VCN iterates these children, so the order and types matter."""
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(nn.Module):
        def __init__(self, num_classes=1000):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            widths, cin = (64, 128, 256, 512), 64
            for i, w in enumerate(widths):
                stride = 1 if i == 0 else 2
                setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
                cin = w
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for i in range(4):
                x = getattr(self, f"layer{i + 1}")(x)
            return self.fc(self.avgpool(x).flatten(1))

    return ResNet18


def _torchvision_loads() -> str | None:
    """None when the installed torchvision imports, else why not (e.g. a CUDA build beside CPU torch)."""
    if importlib.util.find_spec("torchvision") is None:
        return "not installed"
    saved = {m: sys.modules[m] for m in list(sys.modules) if m.split(".")[0] == "torchvision"}
    try:
        importlib.import_module("torchvision.models")
        return None
    except Exception as e:
        for m in [m for m in sys.modules if m.split(".")[0] == "torchvision" and m not in saved]:
            del sys.modules[m]
        return f"{type(e).__name__}: {str(e)[:80]}"


def shim_plan() -> dict[str, str]:
    """Which stand-ins `shims()` will install here (recorded in the JSON)."""
    notes = {}
    why = _torchvision_loads()
    if why:
        notes["torchvision"] = f"stand-in ({why}); resnet18 built here"
    for name in ("efficientnet_pytorch", "pytorch_lightning"):
        if importlib.util.find_spec(name) is None:
            notes[name] = "stub"
    return notes


@contextlib.contextmanager
def shims():
    """Stand-ins for the modules the official code imports but the timed steps do not need, only
    while their code is imported (diffusers/transformers probe for torchvision and must not see
    the stand-in). Modules imported in here keep their references to the stand-ins."""
    if importlib.util.find_spec("torch") is None:  # nothing to stand in for: the official code cannot run
        yield {}
        return
    plan = shim_plan()
    roots = set(plan)
    finder = _StubFinder(roots)
    sys.meta_path.insert(0, finder)
    try:
        if "torchvision" in roots:
            import torchvision.models as tv_models

            resnet = _resnet18_module()
            tv_models.resnet18 = lambda pretrained=False, **kw: resnet()  # weights are irrelevant to timing
        if "pytorch_lightning" in roots:
            import pytorch_lightning as pl
            from torch import nn

            class LightningModule(nn.Module):  # training_step and friends are driven by this script
                pass

            pl.LightningModule = LightningModule
            pl.Callback = object
        yield plan
    finally:
        sys.meta_path.remove(finder)
        for m in [m for m in sys.modules if m.split(".")[0] in roots]:
            del sys.modules[m]


# ---- the official training iterations --------------------------------------------------------
@dataclasses.dataclass
class ReferenceStep:
    step: Callable[[], Any]  # one training iteration
    info: dict


def xraygan_reference(repo: str, stage: int, batch: int, sentences: int, words: int, vocab: int) -> ReferenceStep:
    """One iteration of the official `train_GAN_layer` loop body at `stage`: for each view,
    `Loss_on_layer_GAN` (encoder -> cascade -> critic step with GP, then adversarial + 100 x MSE
    generator step), then the VC step (0.1 x BCE of the VCN on both generated views). Config
    values come from the checkout's config/Openi_XrayGAN.json.

    Shim: the official code backpropagates the VC loss through images whose graph saved weights
    that the two generator `optimizer.step()`s have since updated in place, which current torch
    refuses; the VC step here regenerates both views first (one extra encoder + cascade forward,
    which slows the reference a little)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    with open(os.path.join(repo, "config", "Openi_XrayGAN.json")) as f:
        cfg = json.load(f)
    with official_path(repo):
        from models.Decoder import MultiscaleDecoder, PDecoderv3, baseDecoderv3
        from models.Discriminator import PDiscriminator
        from models.Encoder import HAttnEncoder
        from models.Siamese import Classifinet
        from models.tools import cal_gradient_penalty

    base_size, feat = 32, cfg["D_CHANNEL_SIZE"]
    base_ratio = 5  # log2(32)
    encoder = HAttnEncoder(vocab_size=vocab, embed_size=cfg["E_EMBED_SIZE"], hidden_size=cfg["E_HIDEN_SIZE"],
                           max_len=[sentences, sentences], unit=cfg["RNN_CELL"], feature_base_dim=feat)

    def cascade():
        decs = [baseDecoderv3(input_dim=feat, feature_base_dim=feat, uprate=base_ratio)]
        decs += [PDecoderv3(input_dim=feat, feature_base_dim=128) for _ in range(stage)]  # the official nf=128
        return MultiscaleDecoder(decs)

    decoder_f, decoder_l = cascade(), cascade()
    dr = base_ratio - 2 + stage
    d_f = PDiscriminator(base_feature=cfg["DIS_CHANNEL_SIZE"], txt_input_dim=feat, down_rate=dr)
    d_l = PDiscriminator(base_feature=cfg["DIS_CHANNEL_SIZE"], txt_input_dim=feat, down_rate=dr)
    embednet = Classifinet(backbone="resnet18")
    b1 = cfg["beta1"]
    g_opt = torch.optim.Adam(list(encoder.parameters()) + list(decoder_f.parameters()) + list(decoder_l.parameters()),
                             lr=cfg["G_LR"][stage], betas=(b1, 0.999))
    d_opt = torch.optim.Adam(list(d_f.parameters()) + list(d_l.parameters()), lr=cfg["D_LR"][stage], betas=(b1, 0.999))
    mse, bce = nn.MSELoss(), nn.BCELoss()
    for m in (encoder, decoder_f, decoder_l, d_f, d_l):
        m.train()
    embednet.eval()  # frozen during GAN training: its optimiser is not stepped there

    gen = torch.Generator().manual_seed(0)
    finding = torch.randint(1, vocab, (batch, sentences, words), generator=gen)
    impression = torch.randint(1, vocab, (batch, sentences, words), generator=gen)
    res = base_size * 2**stage
    images = {v: torch.rand(batch, 1, 256, 256, generator=gen) * 2 - 1 for v in ("F", "L")}
    pix, adv, vc = cfg["PIXEL_LOSS_RATIO"], cfg["ADV_LOSS_RATIO"], cfg["VC_LOSS_RATIO"]

    def view_step(image, decoder, disc):
        image = F.interpolate(image, size=res)
        txt, _ = encoder(finding, impression)
        fake = decoder(txt, stage)
        d_opt.zero_grad()
        gp, _ = cal_gradient_penalty(disc, image, fake, txt, "cpu", lambda_gp=10.0)
        d_loss = disc(fake, txt).mean() - disc(image, txt).mean() + gp
        d_loss.backward(retain_graph=True)
        d_opt.step()
        g_opt.zero_grad()
        (-adv * disc(fake, txt).mean()).backward(retain_graph=True)
        (pix * mse(fake.float(), image.float())).backward(retain_graph=True)
        g_opt.step()

    def step():
        view_step(images["F"], decoder_f, d_f)
        view_step(images["L"], decoder_l, d_l)
        g_opt.zero_grad()
        txt, _ = encoder(finding, impression)
        pred = embednet(decoder_f(txt, stage), decoder_l(txt, stage))
        (vc * bce(pred, torch.zeros_like(pred))).backward()
        g_opt.step()

    return ReferenceStep(step, {"resolution": res, "sentences": sentences, "words": words, "vocab": vocab,
                                "vc_regenerates_views": True})


def pggan_reference(repo: str, batch: int) -> ReferenceStep:
    """CXR_PGGAN's ProGAN grown to 32 px (three `add_depth`s from its configuration's depths), alpha
    at the start of the fade-in; one iteration = what Lightning runs per batch with its two
    optimisers: training_step(optimizer_idx=0) -> backward -> D Adam step, the same for the
    generator, then training_step_end (counters, EMA of G, alpha schedule)."""
    import torch

    with official_path(repo, aliases={"GAN": "PGGAN"}):
        from PGGAN import configuration, network, utility

    hp = configuration.hparams
    hp.sample = 10**9  # no sample grids inside the timed iterations
    hp.b1, hp.b2 = float(hp.b1), float(hp.b2)  # its int 0 beside 0.99: current torch.optim.Adam refuses the mix
    hp.batch_sizes = torch.full_like(hp.batch_sizes, float(batch))
    model = network.ProGAN(hp)
    for _ in range(3):  # 4 -> 8 -> 16 -> 32 px
        model.add_depth()

    def penalty(real_samples, fake_samples):  # the official call omits the discriminator
        return utility.compute_gradient_penalty(model.discriminator, real_samples, fake_samples)

    network.compute_gradient_penalty = penalty
    model.logger = types.SimpleNamespace(experiment=types.SimpleNamespace(add_scalar=lambda *a, **k: None,
                                                                          add_image=lambda *a, **k: None))
    (opt_d, opt_g), _ = model.configure_optimizers()
    model.train()
    channels = int(hp.img_channels)
    images = torch.rand(batch, channels, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.zeros(batch, dtype=torch.long)

    def step():
        for idx, opt in enumerate((opt_d, opt_g)):
            model.zero_grad()
            out = model.training_step((images, labels), 0, idx)
            out["loss"].sum().backward()
            opt.step()
            model.training_step_end(out)

    step()  # the first iteration sets alpha from the fade-in schedule (it starts at 1)
    return ReferenceStep(step, {"resolution": 32, "channels": channels, "alpha": float(model.alpha),
                                "widths": [int(d) for d in hp.depths[:3]]})


BIGGAN_FLAGS = ["--G_ch", "64", "--D_ch", "64", "--G_attn", "64", "--D_attn", "64", "--G_shared", "--shared_dim", "128",
                "--hier", "--dim_z", "120", "--G_nl", "inplace_relu", "--D_nl", "inplace_relu", "--SN_eps", "1e-6",
                "--BN_eps", "1e-5", "--adam_eps", "1e-6", "--G_init", "ortho", "--D_init", "ortho", "--G_lr", "1e-4",
                "--D_lr", "4e-4", "--D_B2", "0.999", "--G_B2", "0.999", "--num_D_steps", "2", "--ema",
                "--ema_start", "20000"]


def biggan_reference(repo: str, batch: int) -> ReferenceStep:
    """BigGAN-PyTorch's `GAN_training_function` (num_D_steps=2 of `batch` real + `batch` generated
    images each, then one G step of `batch`, then the EMA) with the 128-px ImageNet launch flags
    at ch 64 (shared embedding, hierarchical z of 120, self-attention at 64, SN everywhere, ortho
    init), 14 classes for the 14 labels. Built from its own argument parser, as train.py does."""
    import torch

    with official_path(repo):
        import BigGAN
        import train_fns
        import utils

    config = vars(utils.prepare_parser().parse_args(BIGGAN_FLAGS + ["--batch_size", str(batch)]))
    config.update(resolution=128, n_classes=14, G_activation=utils.activation_dict[config["G_nl"]],
                  D_activation=utils.activation_dict[config["D_nl"]])
    torch.manual_seed(0)
    G, D = BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    G_ema = BigGAN.Generator(**{**config, "skip_init": True, "no_optim": True})
    ema = utils.ema(G, G_ema, config["ema_decay"], config["ema_start"])
    GD = BigGAN.G_D(G, D)
    g_batch = max(config["G_batch_size"], config["batch_size"])
    z_, y_ = utils.prepare_z_y(g_batch, G.dim_z, config["n_classes"], device="cpu")
    state_dict = {"itr": 1, "epoch": 0, "save_num": 0, "save_best_num": 0, "best_IS": 0, "best_FID": 999999,
                  "config": config}
    train = train_fns.GAN_training_function(G, D, GD, z_, y_, ema, state_dict, config)
    n_real = batch * config["num_D_steps"] * config["num_D_accumulations"]
    x = torch.rand(n_real, 3, 128, 128) * 2 - 1
    y = torch.randint(0, config["n_classes"], (n_real,))
    G.train()
    D.train()
    return ReferenceStep(lambda: train(x, y), {"resolution": 128, "ch": 64, "num_D_steps": config["num_D_steps"],
                                               "real_images_per_step": n_real, "g_batch": g_batch})


UNET_BLOCKS = (64, 128, 256, 256)
UNET_CONTEXT = (77, 768)  # SD-1.x text context: tokens x width


def sd_unet_reference(batch: int) -> ReferenceStep:
    """diffusers' UNet2DConditionModel (SD-1.x block types, 8 heads, cross-attention 768) with
    block_out_channels (64,128,256,256) on 32x32x4 latents: DDPM noising at uniform timesteps
    (scaled-linear betas), epsilon-prediction MSE, Adam."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, block_out_channels=UNET_BLOCKS,
                                layers_per_block=2, cross_attention_dim=UNET_CONTEXT[1], attention_head_dim=8)
    unet.train()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    opt = torch.optim.Adam(unet.parameters(), lr=1e-4)
    latents = torch.randn(batch, 4, 32, 32)
    context = torch.randn(batch, *UNET_CONTEXT)

    def step():
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,))
        pred = unet(sched.add_noise(latents, noise, t), t, encoder_hidden_states=context).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return ReferenceStep(step, {"latent": [32, 32, 4], "context": list(UNET_CONTEXT)})


def count_torch_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of `fn()` by torch's own per-op formulas (matmuls, convolutions, attention; forward
    and backward). FlopCounterMode itself is not used: its module tracker breaks on the
    `autograd.grad(create_graph=True)` of the gradient penalties."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += formula(*args, **kwargs, out_val=out)
            return out

    counter = Counter()
    with counter:
        fn()
    return float(counter.total)


def time_reference(ref: ReferenceStep, args) -> dict:
    """Median seconds per iteration (and FLOPs of one, counted by torch) of the official step."""
    import torch

    with torch.random.fork_rng():
        for _ in range(args.warmup):
            ref.step()
        flops = count_torch_flops(ref.step)
        t = common.time_fn(ref.step, warmup=0, repeats=args.repeats, number=args.steps)
    return {"step_s": t["median_s"], "step_min_s": t["min_s"], "flops": float(flops) or None,
            "step_times_s": t["times_s"]}


# ---- our equivalent steps --------------------------------------------------------------------
def _patched_config(module, overrides: Callable):
    """A context in which `module.get_config(...)` returns its config passed through `overrides`,
    so the benchmark modules' own task builders run unchanged at the compared architecture."""
    original = module.get_config

    def get_config(variant=""):
        config = original(variant)
        overrides(config)
        return config

    @contextlib.contextmanager
    def ctx():
        module.get_config = get_config
        try:
            yield
        finally:
            module.get_config = original

    return ctx()


def _bench_module(name: str):
    """benchmarks/<name>.py, whether this file runs as a script or as `benchmarks.compare_official`."""
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ImportError:  # pragma: no cover  (script: benchmarks/ itself is on sys.path)
        return importlib.import_module(name)


def _step_args(args) -> argparse.Namespace:
    return argparse.Namespace(compile_only=False, warmup=args.warmup, repeats=args.repeats, steps=args.steps,
                              peak_flops=args.peak_flops or 150e9, prng="threefry")


def xraygan_task(stage: int, batch: int, workdir: str):
    """benchmarks/xraygan.py's task (its report tokenizer, an untrained frozen VCN), 'official'
    variant with the full ResNet-18 VCN, stages 32 and 64 px only, `batch` at `stage`."""
    xb = _bench_module("xraygan")
    from xray_gen.configs import xraygan as cfg_module

    def overrides(c):
        x = c.xraygan
        x.num_stages = 2
        c.data.resolution = 64
        sizes = list(x.batch_sizes[:2])
        sizes[stage] = batch
        x.batch_sizes = tuple(sizes)
        x.vcn_variant = ""  # ResNet-18 at full width, as the official Classifinet
        c.data.phantom.train_size = 512  # the tokenizer's corpus; the step does not depend on it

    with _patched_config(cfg_module, overrides):
        return xb.make_task("official", workdir)


def ours_xraygan(task, config, stage: int, args) -> dict:
    """benchmarks/xraygan.py's phase timing of the GAN phase at `stage` (critics with GP + generator
    with adversarial, pixel and VC terms, both views)."""
    import jax

    xb = _bench_module("xraygan")
    from xray_gen.training.sharding import make_mesh, replicated

    mesh = make_mesh(config.mesh.data)
    state = jax.jit(task.init, out_shardings=replicated(mesh))(xb.make_key(config.seed, "threefry"))
    phase = [i for i, (kind, s, _) in enumerate(task.phases) if kind == "gan" and s == stage][0]
    row = xb.bench_phase(task, phase, {"state": state}, mesh, _step_args(args))
    return {"step_s": row["step_ms_median"] / 1e3, "flops": (row["gflops_per_step"] or 0) * 1e9 or None,
            "compile_s": row["compile_total_s"]}


def ours_pggan(batch: int, args, workdir: str) -> dict:
    """benchmarks/pggan.py's level timing (fade-in start), 'official' variant (3 channels, 512
    wide to 32 px, whole-batch minibatch stddev) grown to 32 px, `batch` at that level."""
    import jax

    pb = _bench_module("pggan")
    from xray_gen.configs import pggan as cfg_module
    from xray_gen.training.sharding import make_mesh, replicated

    def overrides(c):
        c.data.resolution = 32
        sizes = list(c.pggan.batch_sizes[:4])
        sizes[3] = batch
        c.pggan.batch_sizes = tuple(sizes)
        c.data.phantom.train_size = 256

    with _patched_config(cfg_module, overrides):
        task, config = pb.make_task("official", workdir)
    mesh = make_mesh(config.mesh.data)
    state = jax.jit(task.init, out_shardings=replicated(mesh))(pb.make_key(config.seed, "threefry"))
    row = pb.bench_phase(task, len(task.phases) - 1, {"state": state}, mesh, _step_args(args))
    return {"step_s": row["step_ms_median"] / 1e3, "flops": (row["gflops_per_step"] or 0) * 1e9 or None,
            "compile_s": row["compile_total_s"], "alpha": row["alpha"], "out_channels": config.pggan.out_channels}


def emixer_config(batch: int):
    """The paper config (128 px, ch 64, attention at 64, z 120, label embedding 128, 2 D steps)
    with 3 channels as BigGAN, `batch` images per D step and per G step, without SSGAN's rotation
    loss (its four rotations quadruple the critic's batches; BigGAN has no such term), and the report
    side (F, D_report, D_joint) as small as the model allows: BigGAN has none of it."""
    from xray_gen.configs.emixer import get_config

    c = get_config("")
    c.train.batch_size = batch * c.emixer.d_steps  # one slice per D step, the G step reuses the first
    e = c.emixer
    e.out_channels = 3
    e.rotation_loss = False
    e.classifier_variant = "smoke"  # F's DenseNet
    e.vocab_size, e.max_sentences, e.max_words = 64, 1, 4
    e.f_hidden, e.word_layers = 16, 1
    e.report_embed_dim, e.report_hidden, e.joint_ch = 8, 16, 4
    return c


def ours_emixer(batch: int, args) -> dict:
    import jax

    from xray_gen.models.emixer.task import EmixerTask
    from xray_gen.training.sharding import batch_sharding, make_mesh, replicated, to_global

    config = emixer_config(batch)
    task = EmixerTask(config, None)
    host = _bench_module("train_step").emixer_batch(config, config.train.batch_size, seed=0)
    mesh = make_mesh(config.mesh.data)
    rep = replicated(mesh)
    batch_arr = to_global(host, mesh)
    state = jax.jit(task.init, out_shardings=rep)(jax.random.PRNGKey(config.seed))
    step_fn = jax.jit(task.train_step, in_shardings=(rep, rep, batch_sharding(mesh)), out_shardings=(rep, rep),
                      donate_argnums=0)
    return _time_ours(step_fn, state, batch_arr, args, frozen={})


def _time_ours(step_fn, state, batch, args, frozen=None) -> dict:
    """`step_fn(state, batch)`, or the loop's `step_fn(state, frozen, batch)` when `frozen` is given."""
    extra = () if frozen is None else (frozen,)
    stats = common.compile_stats(step_fn, state, *extra, batch)
    compiled = stats.pop("compiled")
    compiled = compiled if frozen is None else common.with_frozen(compiled, frozen)
    _, _, timing = common.time_train_step(compiled, state, batch, warmup=args.warmup, repeats=args.repeats,
                                          steps=args.steps, flops=stats["flops"], peak_flops=args.peak_flops or 150e9)
    return {"step_s": timing["step_ms_median"] / 1e3, "flops": stats["flops"], "compile_s": stats["compile_total_s"]}


def unet_train_step(net, tx, num_timesteps: int = 1000):
    """(state, batch) -> (state, metrics): DDPM noising at uniform timesteps (scaled-linear betas
    as SD), epsilon-prediction MSE, one optax step; state = {params, opt_state, rng, step}."""
    import jax
    import jax.numpy as jnp
    import optax

    betas = jnp.linspace(0.00085**0.5, 0.012**0.5, num_timesteps, dtype=jnp.float32) ** 2
    alphas_cumprod = jnp.cumprod(1.0 - betas)

    def step(state, batch):
        x0, context = batch["latents"], batch["context"]
        k_t, k_n = jax.random.split(jax.random.fold_in(state["rng"], state["step"]))
        t = jax.random.randint(k_t, (x0.shape[0],), 0, num_timesteps)
        noise = jax.random.normal(k_n, x0.shape, x0.dtype)
        a = alphas_cumprod[t][:, None, None, None]
        xt = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise

        def loss_fn(params):
            return jnp.mean((net.apply({"params": params}, xt, t, context) - noise) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return ({**state, "params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
                 "step": state["step"] + 1}, {"loss": loss})

    return step


def ours_sd_unet(batch: int, args) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from xray_gen.nn.unet2d import UNet2DConditionModel, UNetConfig

    net = UNet2DConditionModel(UNetConfig(block_out_channels=UNET_BLOCKS, num_heads=8,
                                          cross_attention_dim=UNET_CONTEXT[1], sample_size=32))
    tx = optax.adam(1e-4)
    k_p, k_x, k_c = jax.random.split(jax.random.PRNGKey(0), 3)
    data = {"latents": jax.random.normal(k_x, (batch, 32, 32, 4)),
            "context": jax.random.normal(k_c, (batch, *UNET_CONTEXT))}
    params = jax.jit(net.init)(k_p, data["latents"], jnp.zeros((batch,), jnp.int32), data["context"])["params"]
    state = {"params": params, "opt_state": tx.init(params), "rng": jax.random.PRNGKey(1),
             "step": jnp.zeros((), jnp.int32)}
    return _time_ours(jax.jit(unet_train_step(net, tx), donate_argnums=0), state, data, args)


# ---- driver ----------------------------------------------------------------------------------
def measure_peak() -> float:
    """fp32 FLOP/s of a 1024^3 torch matmul (best of 10): the machine's practical dense peak."""
    import torch

    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * 1024**3 / best


def run_pair(pair: Pair, batch: int, args, repos: dict, workdir: str) -> dict:
    load_start = os.getloadavg()
    info: dict = {}
    if pair.name.startswith("xraygan"):
        stage = 0 if pair.name == "xraygan_32" else 1
        # Our task first (it trains the report tokenizer): theirs gets the same vocabulary and
        # report shape (sentences x words per section); then theirs and ours are timed back to back.
        task, config = xraygan_task(stage, batch, workdir)
        x = config.xraygan
        ref = xraygan_reference(repos[pair.repo_flag], stage, batch, x.max_sentences, x.max_words,
                                task.tokenizer.vocab_size)
        reference = time_reference(ref, args)
        ours = ours_xraygan(task, config, stage, args)
    else:
        if pair.name == "pggan_32":
            ref = pggan_reference(repos[pair.repo_flag], batch)
        elif pair.name == "biggan_128":
            ref = biggan_reference(repos[pair.repo_flag], batch)
        else:
            ref = sd_unet_reference(batch)
        reference = time_reference(ref, args)
        if pair.name == "pggan_32":
            ours = ours_pggan(batch, args, workdir)
        elif pair.name == "biggan_128":
            ours = ours_emixer(batch, args)
        else:
            ours = ours_sd_unet(batch, args)
    info.update(ref.info)
    row = compare_row(pair, batch, reference, ours, args.peak_flops)
    row.update({"ours_compile_s": ours.get("compile_s"), "reference_step_times_s": reference["step_times_s"],
                "load_avg_start": load_start[0], "load_avg_end": os.getloadavg()[0], "reference_setup": info,
                "note": ""})
    return row


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--xraygan_repo", default="", help="checkout of UCSD-AI4H/XRayGAN (rows xraygan_32, xraygan_64)")
    p.add_argument("--pggan_repo", default="", help="checkout of BradSegal/CXR_PGGAN (row pggan_32)")
    p.add_argument("--biggan_repo", default="", help="checkout of ajbrock/BigGAN-PyTorch (row biggan_128)")
    p.add_argument("--pairs", default="", help=f"comma-separated subset of {','.join(PAIR_NAMES)} (default all)")
    p.add_argument("--steps", type=int, default=2, help="steps per timed repeat (both sides)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median per step is compared")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (after compilation for ours)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the core count)")
    p.add_argument("--peak_flops", type=float, default=0.0,
                   help="declared fp32 peak FLOP/s (default: measure a 1024^3 torch matmul)")
    p.add_argument("--quick", action="store_true", help="batch 2 everywhere, 1 step x 1 repeat: checks the harness")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/compare_official_cpu.json)")
    args = p.parse_args(argv)
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.quick:
        args.steps, args.repeats, args.warmup = 1, 1, 1
    select_pairs(args.pairs)  # fail on a bad name before any work
    return args


def without_paths(text: str, paths) -> str:
    """`text` with each of `paths` shortened to its folder name (results carry no machine paths)."""
    forms = {form: os.path.basename(os.path.normpath(p)) for p in paths if p for form in (os.path.abspath(p), p)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, forms[form])
    return text


def public_args(args) -> dict:
    """The arguments for the JSON, each repo reduced to its folder name (no machine paths)."""
    out = dict(vars(args))
    for key in ("xraygan_repo", "pggan_repo", "biggan_repo"):
        out[key] = os.path.basename(os.path.normpath(out[key])) if out[key] else ""
    if out.get("out"):
        out["out"] = os.path.basename(out["out"])
    return out


def main(argv=None) -> str:
    args = parse_args(argv)
    pairs = select_pairs(args.pairs)
    repos = {"xraygan_repo": args.xraygan_repo, "pggan_repo": args.pggan_repo, "biggan_repo": args.biggan_repo}
    extra: dict[str, Any] = {"cpu_count": os.cpu_count(), "load_avg_start": list(os.getloadavg())}
    torch_ok = importlib.util.find_spec("torch") is not None
    # A missing checkout is the more useful message (it names the flag), so it is checked first.
    problems = {p.name: repo_problem(p, repos.get(p.repo_flag)) or (None if torch_ok else "torch is not installed")
                for p in pairs}
    if any(v is None for v in problems.values()):  # torch only when something will run
        import torch

        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        extra.update(torch_version=torch.__version__, torch_threads=torch.get_num_threads(), shims=shim_plan())
        if not args.peak_flops:
            args.peak_flops = measure_peak()
            extra["peak_source"] = "measured: 1024^3 torch fp32 matmul, best of 10"
        else:
            extra["peak_source"] = "declared (--peak_flops)"
    extra["peak_flops"] = args.peak_flops or None
    rows = []
    with tempfile.TemporaryDirectory(prefix="compare_official_") as workdir:
        for pair in pairs:
            if problems[pair.name]:
                print(f"{pair.name}: skipped ({problems[pair.name]})", flush=True)
                rows.append(skipped_row(pair, without_paths(problems[pair.name], repos.values())))
                continue
            batch = pair.quick_batch if args.quick else pair.batch
            print(f"{pair.name}: {pair.reference} vs {pair.ours}, batch {batch} ...", flush=True)
            try:
                row = run_pair(pair, batch, args, repos, workdir)
            except Exception as e:  # one pair's failure (e.g. a different revision of its repo) is its row
                import traceback

                traceback.print_exc()
                rows.append({**skipped_row(pair, without_paths(f"{type(e).__name__}: {e}", repos.values())),
                             "status": "failed", "batch": batch})
                continue
            print(f"{pair.name}: official {row['reference_items_per_s']:.3g} {pair.unit}/s, ours "
                  f"{row['ours_items_per_s']:.3g}, ratio {row['ratio']:.2f} (target {row['target_ratio']})", flush=True)
            rows.append(row)
    extra["load_avg_end"] = list(os.getloadavg())
    extra["summary"] = {r["pair"]: (round(r["ratio"], 3) if r["status"] == "measured" else r["status"]) for r in rows}
    print("\n" + table(rows))
    path = args.out or os.path.join(common.RESULTS_DIR, "compare_official_cpu.json")
    payload = {"benchmark": "compare_official", "env": common.environment(), "args": public_args(args),
               "results": rows, **extra}
    from xray_gen.files import atomic_open

    with atomic_open(path) as f:
        json.dump(common._jsonable(payload), f, indent=2)
        f.write("\n")
    print(f"\nwrote {os.path.relpath(path)}")
    return path


if __name__ == "__main__":
    main()
