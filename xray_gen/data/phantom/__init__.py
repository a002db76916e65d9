"""The phantom: the embedded default data source of procedurally generated chest studies.

    from xray_gen.data.phantom import Phantom
    ph = Phantom(resolution=256, seed=0, deid_rate=0.0)
    study = ph.study(index, split="train")
    study = ph.study_with({"Cardiomegaly": 1.0, "Pleural Effusion": -1.0}, index=0, split="test")

Every study is a parametric 3-D chest (`anatomy.py`) with findings placed in 3-D (`findings.py`),
projected to a frontal and a lateral radiograph of the same body (`projection.py`, `imaging.py`),
and a report written from the same ground truth (`report.py`). A study depends only on
(seed, split, index) (and the requested findings for `study_with`), never on call order.
"""

from __future__ import annotations

import zlib

import numpy as np

from xray_gen.data.phantom import anatomy, findings, imaging, report
from xray_gen.data.schema import Study

SPLITS = ("train", "validation", "test")

__all__ = ["Phantom", "SPLITS"]


class Phantom:
    """Procedural chest X-ray studies (frontal + lateral + report + labels).

    Args:
      resolution: output image size (square), e.g. 64, 128, 256.
      seed: dataset seed; with (split, index) it fixes the patient and everything drawn.
      deid_rate: probability of an Open-i style de-identification token ("XXXX") in a report.
      lateral: render the lateral view (False: `Study.lateral` is None, ~30% faster, for
        frontal-only models; the frontal, report and labels are unchanged).
    """

    def __init__(self, resolution: int = 256, seed: int = 0, deid_rate: float = 0.0, lateral: bool = True):
        if resolution < 16:
            raise ValueError(f"Phantom resolution must be >= 16, got {resolution}")
        if not 0.0 <= deid_rate <= 1.0:
            raise ValueError(f"deid_rate must be in [0, 1], got {deid_rate}")
        self.resolution, self.seed, self.deid_rate = int(resolution), int(seed), float(deid_rate)
        self.lateral = bool(lateral)

    def _rngs(self, index: int, split: str):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        ss = np.random.SeedSequence([self.seed, zlib.crc32(split.encode()), int(index)])
        patient, truth, body, film, text = ss.spawn(5)
        return tuple(np.random.default_rng(s) for s in (patient, truth, body, film, text))

    def study(self, index: int, split: str = "train") -> Study:
        """Study `index` of `split`, findings drawn with the phantom's co-occurrence model."""
        rp, rt, rb, rf, rx = self._rngs(index, split)
        patient = anatomy.sample_patient(rp)
        return self._make(index, split, patient, findings.sample_truth(rt, patient), rb, rf, rx)

    def study_with(self, values: dict, index: int = 0, split: str = "train") -> Study:
        """A study whose ground truth has exactly the requested findings.

        `values` maps CheXpert observation names to 1 (stated) or -1 (hedged in the report);
        0/NaN entries and "No Finding" are ignored (absent). The CheXpert hierarchy adds a stated
        Lung Opacity when a positive edema/consolidation/pneumonia/lesion/atelectasis is requested.
        Patient variation is drawn from (seed, split, index), as in `study`.
        """
        rp, rt, rb, rf, rx = self._rngs(index, split)
        patient = anatomy.sample_patient(rp)
        return self._make(index, split, patient, findings.requested_truth(dict(values), rt, patient),
                          rb, rf, rx)

    def report(self, index: int, split: str = "train") -> tuple[str, str]:
        """(findings, impression) of `study(index, split)` without rendering its images: the report
        depends only on the patient, the findings and its own random stream (cheap vocabulary
        training)."""
        rp, rt, _, _, rx = self._rngs(index, split)
        patient = anatomy.sample_patient(rp)
        text, impression, _ = report.write(findings.sample_truth(rt, patient), patient, rx, self.deid_rate)
        return text, impression

    def _make(self, index, split, patient, truth, rb, rf, rx) -> Study:
        anat = anatomy.make_anatomy(patient)
        findings.apply_before(truth, anat, rb)
        scene = anatomy.build(anat, rb)
        findings.apply_after(truth, anat, scene, rb)
        frontal, lateral = imaging.radiographs(scene, anatomy.arms(anat), patient, self.resolution, rf,
                                               lateral=self.lateral)
        text, impression, labels = report.write(truth, patient, rx, self.deid_rate)
        return Study(
            patient_id=f"phantom-{split}-{index}", study_id=f"phantom-{split}-{index}-s{self.seed}",
            frontal=frontal, lateral=lateral, findings=text, impression=impression, labels=labels,
            frontal_view=patient.view, lateral_view="LATERAL" if self.lateral else "", source="phantom",
        )

    def __repr__(self):
        return (f"Phantom(resolution={self.resolution}, seed={self.seed}, deid_rate={self.deid_rate}, "
                f"lateral={self.lateral})")
