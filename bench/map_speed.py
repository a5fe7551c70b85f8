"""The zoo's COCO mAP (``zoo.detection.coco_map``, faster-coco-eval backend) against pycocotools'
COCOeval on the same synthetic input: ``--images`` images with ``--dets`` detections each. The 12
numbers must agree to 1e-6 and the zoo must take at most half pycocotools' time.

    python bench/map_speed.py                       # 5,000 images x 100 detections
    python bench/map_speed.py --images 200          # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import markdown_table, write_json  # noqa: E402
from zoo.detection.metrics import COCO_STAT_NAMES, coco_map, run_cocoeval, to_coco_dicts  # noqa: E402


def synthetic(images: int, dets: int, classes: int, seed: int) -> tuple[list, list]:
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in tqdm(range(images), desc="synthetic images"):
        n = int(torch.randint(1, 15, (1,), generator=g))
        boxes = torch.rand(n, 4, generator=g) * 500
        boxes[:, 2:] = boxes[:, :2] + 4 + torch.rand(n, 2, generator=g) * 150
        labels = torch.randint(1, classes + 1, (n,), generator=g)
        crowd = (torch.rand(n, generator=g) < 0.03).long()
        targets.append({"boxes": boxes, "labels": labels, "iscrowd": crowd})
        src = torch.randint(0, n, (dets,), generator=g)
        p = boxes[src] + torch.randn(dets, 4, generator=g) * 12
        p[:, 2:] = torch.maximum(p[:, 2:], p[:, :2] + 1)
        lab = torch.where(
            torch.rand(dets, generator=g) < 0.8, labels[src], torch.randint(1, classes + 1, (dets,), generator=g)
        )
        preds.append({"boxes": p, "scores": torch.rand(dets, generator=g), "labels": lab})
    return preds, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    preds, targets = synthetic(args.images, args.dets, args.classes, args.seed)

    start = time.perf_counter()
    ours = coco_map(preds, targets)  # conversion + faster-coco-eval, what a user calls
    zoo_s = time.perf_counter() - start
    gt, results = to_coco_dicts(preds, targets)
    start = time.perf_counter()
    reference = run_cocoeval(gt, results, "pycocotools").stats  # pycocotools on the prepared input
    ref_s = time.perf_counter() - start

    diff = float(np.max(np.abs(np.asarray([ours[k] for k in COCO_STAT_NAMES]) - reference)))
    rows = [[k, ours[k], float(r)] for k, r in zip(COCO_STAT_NAMES, reference, strict=True)]
    print(markdown_table(["metric", "zoo", "pycocotools"], rows))
    print(f"\nmax |difference| = {diff:.2e} (must be <= 1e-6)")
    print(f"zoo {zoo_s:.2f} s, pycocotools {ref_s:.2f} s: ratio {zoo_s / ref_s:.3f} (must be <= 0.5)")
    path = write_json("map_speed", {
        "args": vars(args), "detections": int(len(results)), "zoo_seconds": zoo_s, "pycocotools_seconds": ref_s,
        "ratio": zoo_s / ref_s, "max_abs_difference": diff, "zoo": {k: ours[k] for k in COCO_STAT_NAMES},
        "pycocotools": dict(zip(COCO_STAT_NAMES, map(float, reference), strict=True)),
        "identical": diff <= 1e-6, "fast_enough": zoo_s <= 0.5 * ref_s,
    }, args.out)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
