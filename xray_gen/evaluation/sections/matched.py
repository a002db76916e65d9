"""The ``matched`` section of the evaluator: each generated image beside the real image of the
study it was generated for (its ``id`` equals a reference ``study_id``, same view). SSIM and PSNR
per view (XRayGAN's and CXR-IRGen's Table 1 measures; a conditional generator is not asked to copy the real image, so this
says how close it comes, not whether it is right).
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from xray_gen.evaluation.generated_folder import VIEWS
from xray_gen.evaluation.sections.context import Context, skipped


def matched(ctx: Context) -> Dict[str, Any]:
    from xray_gen.evaluation.metrics import bootstrap_ci, psnr, ssim

    study = {sid: i for i, sid in enumerate(ctx.ref.ids)}
    out: Dict[str, Any] = {}
    for view in VIEWS:
        position = {s: k for k, s in enumerate(ctx.ref.index[view])}
        rows = [r for r in ctx.gen.rows(view) if ctx.gen.ids[r] in study and study[ctx.gen.ids[r]] in position]
        if not rows:
            out[view] = skipped(f"no generated {view} image has the id of a reference study with a {view} image")
            continue
        real = ctx.ref.images[view][[position[study[ctx.gen.ids[r]]] for r in rows]]
        values = ssim(ctx.gen.images[rows], real, input_range=(0.0, 255.0))
        block = {"ssim": float(np.mean(values)),
                 "psnr": float(np.mean(psnr(ctx.gen.images[rows], real, input_range=(0.0, 255.0)))), "n": len(rows)}
        if ctx.bootstrap:
            block["ssim_ci"] = list(bootstrap_ci(lambda x: float(np.mean(x)), values, n=ctx.bootstrap,
                                                 seed=ctx.seed)[1:])
        out[view] = block
    return out
