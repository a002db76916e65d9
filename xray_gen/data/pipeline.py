"""Input pipelines: Study sources -> grain (per-process shard, shuffle, transform, batch).

Every source is random-access (the phantom computes study i on demand; real datasets are TFDS
array_record files read through `tfds.data_source`), so grain can shard it across processes,
shuffle it deterministically and checkpoint the iterator position exactly.
Images travel as uint8 (4x less traffic than float); models normalise them on device.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Sequence

import grain
import numpy as np
from PIL import Image

from xray_gen.data.schema import NUM_LABELS, binarize

# "archive": a labelled synthetic archive (data/archive_source.py), for training on synthetic data.
SOURCES = ("phantom", "openi", "mimic_cxr", "chestxray14", "chexpert", "archive")
SPLITS = ("train", "validation", "test")


# Rendered phantom studies kept by sources with `memoize=True`, shared by every source in the
# process: (split, resolution, seed, deid_rate, lateral, index) -> example.
_PHANTOM_MEMO: dict[tuple, dict[str, Any]] = {}


class PhantomSource:
    """Random-access view of `size` phantom studies of one split (as `Study.to_example()` dicts).

    `memoize=True` keeps each study once rendered, for every later epoch and every later run in
    this process (XRayGAN's VCNs, classifier and GAN read the same studies): ~8 KB per study at
    64 px, ~130 KB at 256 px, so meant for small `size`. The memo lives in the process that reads,
    i.e. use it with `data.worker_count=0`. A frontal-only source reuses frontal+lateral entries
    (the frontal does not depend on whether the lateral was rendered).
    """

    def __init__(self, split: str, size: int, resolution: int, seed: int = 0, deid_rate: float = 0.0,
                 lateral: bool = True, memoize: bool = False):
        from xray_gen.data.phantom import Phantom  # the phantom is heavy to import only when used

        self._args = (split, size, resolution, seed, deid_rate, lateral)
        self.split, self.size, self.memoize = split, int(size), bool(memoize)
        self.phantom = Phantom(resolution=resolution, seed=seed, deid_rate=deid_rate, lateral=lateral)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(f"phantom {self.split} index {index} out of range [0, {self.size})")
        if not self.memoize:
            return self.phantom.study(int(index), split=self.split).to_example()
        split, _, resolution, seed, deid_rate, lateral = self._args
        key = (split, resolution, seed, deid_rate, True, int(index))
        example = _PHANTOM_MEMO.get(key)
        if example is None and not lateral:
            key = key[:4] + (False, int(index))
            example = _PHANTOM_MEMO.get(key)
        if example is None:
            example = _PHANTOM_MEMO[key] = self.phantom.study(int(index), split=self.split).to_example()
        if not lateral and example["has_lateral"]:  # as a frontal-only phantom writes it
            example = {**example, "lateral": np.zeros((0, 0), np.uint8), "has_lateral": False, "lateral_view": ""}
        return dict(example)

    def report(self, index: int) -> tuple[str, str]:
        """(findings, impression) of study `index`, without rendering its images."""
        return self.phantom.report(int(index), split=self.split)

    def labels(self, index: int) -> np.ndarray:
        """Raw labels (14,) of study `index` from its report stream alone (no rendering): the same
        draws as `Phantom.study`, whose labels come from the same `report.write` call."""
        from xray_gen.data.phantom import anatomy, findings, report

        rp, rt, _, _, rx = self.phantom._rngs(int(index), self.split)
        patient = anatomy.sample_patient(rp)
        return np.asarray(report.write(findings.sample_truth(rt, patient), patient, rx, self.phantom.deid_rate)[2],
                          np.float32)

    def __repr__(self) -> str:  # stable: grain stores it in iterator checkpoints
        return "PhantomSource(split={!r}, size={}, resolution={}, seed={}, deid_rate={}, lateral={})".format(*self._args)


def source_labels(source) -> np.ndarray:
    """(N, 14) raw labels (1 / 0 / -1 / NaN) of every study of `source` (the phantom's without rendering)."""
    read = source.labels if isinstance(source, PhantomSource) else (lambda i: source[i]["labels"])
    rows = [np.asarray(read(i), np.float32) for i in range(len(source))]
    return np.stack(rows) if rows else np.zeros((0, NUM_LABELS), np.float32)


class ConcatSource:
    """Random access over several sources one after another (real + synthetic training data)."""

    def __init__(self, *sources):
        self.sources = sources
        self._ends = np.cumsum([len(s) for s in sources])

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range [0, {len(self)})")
        k = int(np.searchsorted(self._ends, index, side="right"))
        return self.sources[k][int(index - (self._ends[k - 1] if k else 0))]

    def __repr__(self) -> str:
        return f"ConcatSource({', '.join(map(repr, self.sources))})"


def open_split(data_config, split: str, views: Sequence[str] = ("frontal", "lateral")):
    """The random-access source named by `data_config.source` for `split`; with
    `data.synthetic_dir` (a labelled synthetic archive) the train split is real + all of it.

    `views` lets the phantom skip rendering a view the model never uses; real datasets hold what
    they hold (the pipeline's `ToModelInputs` rejects studies missing a needed view).
    """
    synthetic = data_config.get("synthetic_dir", "")
    if split == "train" and synthetic:
        from xray_gen.data.archive_source import ArchiveSource

        return ConcatSource(_open_real_split(data_config, split, views),
                            ArchiveSource(synthetic, "all", resolution=data_config.resolution))
    return _open_real_split(data_config, split, views)


def _open_real_split(data_config, split: str, views: Sequence[str]):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    name = data_config.source
    if name == "phantom":
        return PhantomSource(
            split,
            size=data_config.phantom[f"{split}_size"],
            resolution=data_config.resolution,
            seed=data_config.phantom.seed,
            deid_rate=data_config.phantom.deid_rate,
            lateral="lateral" in views,
            memoize=data_config.phantom.get("memoize", False),
        )
    if name not in SOURCES:
        raise ValueError(f"unknown data.source {name!r}; valid: {', '.join(SOURCES)}")
    if not data_config.manual_dir:
        raise ValueError(
            f"data.source={name!r} reads your own downloaded copy: set --config.data.manual_dir=DIR "
            "(credentialed datasets are never downloaded by xray_gen)"
        )
    if name == "archive":  # a labelled synthetic archive (frontal only; train/validation, no test)
        from xray_gen.data.archive_source import ArchiveSource

        return ArchiveSource.from_data_config(data_config, split)
    from xray_gen.data import builders

    options = builder_options(data_config, views)
    return builders.load_split(
        name,
        split,
        manual_dir=data_config.manual_dir,
        data_dir=data_config.data_dir or None,
        resolution=data_config.resolution,
        **options,
    )


def builder_options(data_config, views: Sequence[str]) -> dict[str, Any]:
    """Builder options from `data.options` (a JSON object), plus what the model's views require."""
    import json

    try:
        options = json.loads(data_config.options or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"data.options must be a JSON object, e.g. '{{\"subsets\": [\"p10\"]}}': {e}") from e
    if not isinstance(options, dict):
        raise ValueError(f"data.options must be a JSON object, got {data_config.options!r}")
    if "lateral" in views:
        if data_config.source == "chestxray14":
            raise ValueError("data.source='chestxray14' has frontal images only; this model needs lateral views")
        options.setdefault("require_lateral", True)
    return options


def _resize(image: np.ndarray, resolution: int) -> np.ndarray:
    if image.shape == (resolution, resolution):
        return image
    return np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.BILINEAR))


def equalize_histogram(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of an 8-bit greyscale image (any shape), as XRayGAN loads images.

    With h the 256-bin histogram, cdf its running sum, N the pixel count and cdf_min = cdf at the
    darkest level present, level v maps to

        round((cdf[v] - cdf_min) / (N - cdf_min) * 255)      (exact integer arithmetic, halves up)

    so the darkest level present becomes 0, the brightest 255, and order is preserved. This is the
    textbook definition used by `cv2.equalizeHist` (the official XRayGAN code); OpenCV computes it
    in float32, so it can differ by 1 on exact .5 ties. `PIL.ImageOps.equalize` differs on purpose:
    it uses the CDF *below* v and normalises by N - (count of the brightest level), i.e. it is this
    mapping mirrored (PIL(x) == 255 - ours(255 - x) when N - cdf_min is an odd multiple of 255).
    A constant image (one level) is returned unchanged, as OpenCV and PIL do.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"histogram equalisation expects a uint8 image, got {image.dtype}")
    hist = np.bincount(image.ravel(), minlength=256).astype(np.int64)
    cdf = np.cumsum(hist)
    n = int(cdf[-1])
    cdf_min = int(hist[np.flatnonzero(hist)[0]]) if n else 0
    denom = n - cdf_min
    if denom == 0:  # empty or constant image
        return image.copy()
    lut = ((cdf - cdf_min) * 510 + denom) // (2 * denom)  # round half up, exactly
    return np.clip(lut, 0, 255).astype(np.uint8)[image]


def patient_hash(patient_id: str) -> np.int32:
    """Stable 31-bit id, so in-batch negatives can avoid pairing a patient with themself."""
    return np.int32(zlib.crc32(patient_id.encode("utf-8")) & 0x7FFFFFFF)


@dataclasses.dataclass(frozen=True)
class ToModelInputs(grain.transforms.Map):
    """Study example -> the numeric features models use (strings dropped; picklable for workers).

    Outputs `<view>`: uint8 (R, R, 1) for each requested view, `labels` raw (14,) with NaN,
    `targets`/`label_mask` for classifier training, and `patient` (hash) for pairing logic.

    `equalize` (config `data.equalize`) applies `equalize_histogram` to each view *after* resizing
    to R, as the official XRayGAN code does (Rescale, then Equalize): the model then sees an exactly
    equalised image at its own resolution, whereas equalising first and then resampling bilinearly
    would blend levels and undo part of it. It is also cheaper (R*R pixels, not the stored size).
    """

    views: Sequence[str] = ("frontal",)
    resolution: int = 64
    uncertain_as: float = 1.0
    equalize: bool = False

    @classmethod
    def from_data_config(cls, data_config, views: Sequence[str] = ("frontal",), resolution: int | None = None,
                         **overrides) -> "ToModelInputs":
        """The transform with the data options of `data_config` (resolution unless given,
        `uncertain_as`, `equalize`); configs lacking a field (hand-built) get its default."""
        kwargs = dict(
            views=tuple(views),
            resolution=int(data_config.resolution if resolution is None else resolution),
            uncertain_as=float(data_config.get("uncertain_as", cls.uncertain_as)),
            equalize=bool(data_config.get("equalize", cls.equalize)),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def map(self, ex: dict[str, Any]) -> dict[str, np.ndarray]:
        out = {}
        for view in self.views:
            image = np.asarray(ex[view], np.uint8)
            if image.ndim == 3:
                image = image[..., 0]
            if not ex.get(f"has_{view}", True) or image.size == 0:
                raise ValueError(f"study {ex.get('study_id')!r} has no {view} image but the model needs it")
            image = _resize(image, self.resolution)
            if self.equalize:
                image = equalize_histogram(image)
            out[view] = image[..., None]
        labels = np.asarray(ex["labels"], np.float32)
        targets, mask = binarize(labels, self.uncertain_as)
        out.update(labels=labels, targets=targets, label_mask=mask, patient=patient_hash(str(ex["patient_id"])))
        out.update({k: v for k, v in ex.items() if k.endswith("_ids") or k.endswith("_mask")})  # from ReportInputs
        return out


def make_loader(
    source,
    transforms: Sequence[Any],
    global_batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    worker_count: int = 0,
    drop_remainder: bool = True,
) -> grain.DataLoader:
    """A grain DataLoader yielding this process's rows of each global batch (samplers.GlobalBatchSampler)."""
    import jax

    from xray_gen.data.samplers import GlobalBatchSampler

    n_proc = jax.process_count()
    sampler = GlobalBatchSampler(len(source), global_batch_size, shuffle=shuffle, num_epochs=num_epochs, seed=seed,
                                 process_index=jax.process_index(), process_count=n_proc)
    ops = list(transforms) + [grain.transforms.Batch(global_batch_size // n_proc, drop_remainder=drop_remainder)]
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        shard_options=grain.sharding.NoSharding(),
        operations=ops,
        worker_count=worker_count,
        read_options=grain.ReadOptions(num_threads=max(1, min(4, worker_count or 1)), prefetch_buffer_size=8),
    )


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> tuple[dict[str, np.ndarray], int]:
    """Pads a final partial batch to `batch_size` (repeating the last row); returns (batch, n_valid)."""
    n = len(next(iter(batch.values())))
    if n == batch_size:
        return batch, n
    padded = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - n, axis=0)]) for k, v in batch.items()}
    return padded, n


TOKENIZER_FILE = "tokenizer.model"


def workdir_tokenizer(workdir: str, data_config, vocab_size: int, max_studies: int = 5_000):
    """The run's report vocabulary, kept next to its checkpoints so sampling uses the same one.

    Loaded from `workdir/tokenizer.model` when present (resume, evaluate, sample); otherwise
    trained on the *training split only* (at most `max_studies` studies) and saved there.
    """
    import os
    import types

    import jax

    from xray_gen.data.schema import Study
    from xray_gen.data.tokenizer import ReportTokenizer, train_on_studies

    path = os.path.join(workdir, TOKENIZER_FILE)
    if os.path.exists(path):
        return ReportTokenizer.load(path)
    source = open_split(data_config, "train")

    def report_only(i):  # the phantom can write a report without rendering its images
        findings, impression = source.report(i)
        return types.SimpleNamespace(findings=findings, impression=impression)

    read = report_only if hasattr(source, "report") else lambda i: Study.from_example(source[i])
    tokenizer = train_on_studies((read(i) for i in range(min(len(source), max_studies))), vocab_size=vocab_size)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tokenizer.save(path)
    return tokenizer


@dataclasses.dataclass(frozen=True)
class ReportInputs(grain.transforms.Map):
    """Adds hierarchically tokenised report sections: `<section>_ids` int32 (S, W) + `<section>_mask`.

    Runs before `ToModelInputs` (it needs the report strings, which that transform drops).
    """

    tokenizer: Any
    max_sentences: int = 8
    max_words: int = 24
    sections: Sequence[str] = ("findings", "impression")

    def map(self, ex: dict[str, Any]) -> dict[str, Any]:
        ex = dict(ex)
        for section in self.sections:
            text = ex[section].decode("utf-8") if isinstance(ex[section], bytes) else str(ex[section])
            ids, mask = self.tokenizer.encode_hierarchical(text, self.max_sentences, self.max_words)
            ex[f"{section}_ids"], ex[f"{section}_mask"] = ids, mask
        return ex
