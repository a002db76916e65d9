"""Write docs/phantom_gallery.png: frontal/lateral pairs from the phantom with their reports.

    python scripts/phantom_gallery.py [--out docs/phantom_gallery.png] [--resolution 256]
"""

from __future__ import annotations

import argparse
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from xray_gen.data.phantom import Phantom  # noqa: E402

CASES = [
    ({}, 3),
    ({"Cardiomegaly": 1.0, "Pleural Effusion": 1.0, "Edema": 1.0}, 1),
    ({"Pneumonia": 1.0, "Consolidation": 1.0}, 2),
    ({"Pneumothorax": 1.0, "Support Devices": 1.0, "Fracture": 1.0}, 4),
    ({"Lung Lesion": 1.0, "Atelectasis": -1.0}, 5),
    ({"Enlarged Cardiomediastinum": 1.0, "Support Devices": 1.0, "Pleural Other": 1.0}, 6),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/phantom_gallery.png")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ph = Phantom(resolution=args.resolution, seed=args.seed)
    fig, axes = plt.subplots(2, 6, figsize=(18, 8.4), gridspec_kw={"height_ratios": [1, 1]})
    for k, (values, index) in enumerate(CASES):
        s = ph.study_with(values, index=index, split="test")
        row, col = divmod(k, 3)
        for j, (img, name) in enumerate(((s.frontal, s.frontal_view), (s.lateral, s.lateral_view))):
            ax = axes[row, 2 * col + j]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{s.patient_id} {name}", fontsize=8)
            ax.axis("off")
        text = textwrap.fill(s.report.replace("\n", " "), 78)
        axes[row, 2 * col].text(0.0, -0.04, text, transform=axes[row, 2 * col].transAxes, fontsize=6.4,
                                va="top", ha="left", family="monospace")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.97, bottom=0.12, wspace=0.03, hspace=0.45)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
