"""Memorisation / privacy checks of generated images and reports against the whole training set.

The public entry point of the checks; the code lives in one module per concern:

- :mod:`xray_gen.evaluation.image_privacy`: :func:`image_privacy`, the report for images (pixel and
  feature space, calibrated near-copy rates, closest pairs, optional re-identification);
- :mod:`xray_gen.evaluation.nearest_neighbours`: the streamed nearest-training-image searches
  (feature space: Euclidean; pixel space: shift-tolerant RMS of blurred, normalised images) and
  :func:`gather_rows`;
- :mod:`xray_gen.evaluation.near_copies`: the near-copy threshold calibrated on real held-out
  images, the near-copy rate with its bootstrap interval, the closest pairs;
- :mod:`xray_gen.evaluation.reidentification`: same-patient probability of a generated image and
  its nearest training image, from a siamese-style scoring callable;
- :mod:`xray_gen.evaluation.report_privacy`: :func:`report_privacy`, the report for texts (nearest
  report by word n-gram Jaccard, verbatim and copied-sentence rates, de-identification
  placeholder leaks).

Every entry point returns a JSON-able dict, with the closest (generated, training) pairs (top-k)
for side-by-side display.
"""

from __future__ import annotations

from xray_gen.evaluation.image_privacy import image_privacy
from xray_gen.evaluation.near_copies import (calibrate_threshold, closest_pairs, near_copy_rate,
                                             near_copy_summary)
from xray_gen.evaluation.nearest_neighbours import (feature_nearest_neighbours, gather_rows,
                                                    pixel_nearest_neighbours, preprocess_pixels)
from xray_gen.evaluation.reidentification import reidentification_score
from xray_gen.evaluation.report_privacy import (PLACEHOLDER_PATTERNS, normalise_report, normalise_sentence,
                                                normalised_sentences, placeholder_counts, report_privacy,
                                                word_ngrams)

__all__ = [
    # images: image_privacy and the modules it assembles
    "image_privacy", "feature_nearest_neighbours", "pixel_nearest_neighbours", "preprocess_pixels",
    "gather_rows", "calibrate_threshold", "near_copy_rate", "near_copy_summary", "closest_pairs",
    "reidentification_score",
    # reports: report_privacy
    "report_privacy", "normalise_report", "normalise_sentence", "normalised_sentences", "word_ngrams",
    "placeholder_counts", "PLACEHOLDER_PATTERNS",
]
