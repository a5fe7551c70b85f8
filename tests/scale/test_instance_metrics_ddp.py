"""The instance metrics on 2 DDP processes (CPU, gloo) equal the single-process values.

As in ``test_ddp_metrics.py``, the processes run in subprocesses with a timeout (a collective that one rank never
reaches fails the test instead of blocking the suite), write their numbers as JSON, and the test compares them
with the single-process ones. This file is its own worker (``python tests/scale/test_instance_metrics_ddp.py
metrics|detector ...``), so that no helper script is shared with other tests.

- **The metrics** (:class:`~zoo.core.instance_metrics.DSBScore`: ``compute()`` and ``summary()``;
  :class:`~zoo.core.instance_metrics.COCOMaskMetrics`: ``compute()``, its per-image RLE states gathered by
  :func:`zoo.core.coco.gather_per_image_lists`) on two ranks started here (``torch.distributed``, gloo), each
  updating with its share of 5 images the way :class:`~datamodules.distributed.EverySampleOnceSampler` splits
  them (rank 0: images 0, 2, 4 in two batches; rank 1: images 1, 3 in two batches of one), against one metric
  updated with all 5 in order. A second case gives rank 1 nothing at all (1 image on 2 processes); a third
  saturates the scores above 0.6 to 1.0 (ties across images: COCOeval ranks tied detections by image id, so the
  order in which the ranks' images are gathered matters; marked as a known failure).
- **Mask R-CNN's module** (:class:`zoo.detection.InstanceDetector`: box mAP, mask mAP, DSB score and F1 as logged
  by ``validate`` and ``test``) under Lightning's ``ddp`` strategy on 2 CPU processes against 1 process, on 5
  DSB2018 images. An untrained network finds nothing (every score 0 on any subset, which would prove nothing), so
  the detections are the true nuclei perturbed by a rule fixed per image (as the detection family's DDP test
  does with boxes); everything after the network (thresholding, label images, both metrics, logging) is the
  module's.

The data: label images of real DSB2018 nuclei (256 x 256 images, one mask file per nucleus), predictions made
from them by dropping one nucleus, merging two, eroding some, shifting one and adding a false positive; COCO
predictions are soft masks (a 0.3 ring below the 0.5 threshold around each object), plus a duplicate detection,
with distinct scores.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import traceback
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240  # seconds per launch
# DSB2018 stage-1 images of 256 x 256 pixels with 5 to 28 nuclei (small and quick)
NAME_PREFIXES = ("0b2e702f90ae", "1ee4a111f0e0", "2817299fd3b8", "05040e2e959c", "0a7d30b25235")
WORLD_SIZE = 2
# EverySampleOnceSampler's split of 5 images over 2 ranks (rank r takes r, r + 2, ...), batched as the loaders do
# (rank 0 runs one batch more than rank 1: an uneven last round), and the single process's batches of 2.
# "tied_scores": the 5 images with every score above 0.6 saturated to 1.0 (what float32 softmax gives a confident
# detection, and a mean of saturated probabilities a U-Net instance).
SHARES = {
    "uneven": {0: [[0, 2], [4]], 1: [[1], [3]]},
    "idle_rank": {0: [[0]], 1: []},
    "tied_scores": {0: [[0, 2], [4]], 1: [[1], [3]]},
}
SINGLE = {"uneven": [[0, 1], [2, 3], [4]], "idle_rank": [[0]], "tied_scores": [[0, 1], [2, 3], [4]]}
DISTINCT_SCORES = ("uneven", "idle_rank")
DSB_INTEGER_KEYS = ("images", "empty_images", "true_objects", "pred_objects", "merged", "merged_objects", "split",
                    "split_pieces", "tp", "fp", "fn")  # fmt: skip


# -- the data: real nuclei and perturbed predictions (used by the test and by both workers) --------------------------
def image_folders(stage1_train: Path) -> list[Path]:
    folders = []
    for prefix in NAME_PREFIXES:
        found = sorted(stage1_train.glob(f"{prefix}*"))
        if len(found) != 1:
            pytest.fail(f"DSB2018 image {prefix}* not found (once) in {stage1_train}: {found}")
        folders.append(found[0])
    return folders


def true_labels(folder: Path) -> np.ndarray:
    """The instance label image of one DSB2018 image (one mask file per nucleus), by the data module's rule."""
    from PIL import Image

    from datamodules.instance_targets import labels_from_masks

    masks = [np.asarray(Image.open(path)) > 0 for path in sorted((folder / "masks").glob("*.png"))]
    return labels_from_masks(masks)


def perturb(true: np.ndarray, seed: int) -> np.ndarray:
    """A plausible prediction of the label image ``true``: one nucleus dropped, the two nearest merged into one
    object, every third of the others eroded by 1-3 pixels, one shifted by 2 pixels, a 7 x 7 false positive."""
    pred = np.zeros_like(true)
    ids = [int(i) for i in np.unique(true) if i]
    assert len(ids) >= 4, "the perturbation needs 4 nuclei"
    drop = ids[seed % len(ids)]
    rest = [i for i in ids if i != drop]
    centres = np.asarray(ndimage.center_of_mass(true > 0, true, rest))
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(rest)) * 1e9
    a, b = np.unravel_index(np.argmin(distance), distance.shape)
    merged = {rest[a], rest[b]}
    others = [i for i in rest if i not in merged]
    for j, i in enumerate(others):
        obj = true == i
        if j == 1:  # shifted
            obj = np.roll(obj, (2, 2), axis=(0, 1))
        elif j % 3 == 0:
            obj = ndimage.binary_erosion(obj, iterations=1 + (j // 3) % 3)
        pred[obj & (pred == 0)] = i
    pred[np.isin(true, list(merged))] = rest[a]
    background = ndimage.binary_erosion(true == 0, np.ones((7, 7)), border_value=0)
    ys, xs = np.nonzero(background)
    y, x = ys[len(ys) // 2] - 3, xs[len(xs) // 2] - 3
    pred[y : y + 7, x : x + 7] = max(ids) + 1
    return pred


def detection_scores(num: int, seed: int) -> np.ndarray:
    """Distinct-looking float32 scores in [0.05, 0.95) (uniqueness across images is checked by the test)."""
    return np.random.default_rng(1000 + seed).uniform(0.05, 0.95, num).astype(np.float32)


def soft_masks(pred: np.ndarray) -> torch.Tensor:
    """``(N + 1, 1, H, W)`` mask probabilities of the objects of ``pred`` (0.9 inside, 0.3 in a 1-pixel ring
    around: below the 0.5 threshold) and, last, a duplicate of the first object dilated by 2 pixels."""
    ids = [int(i) for i in np.unique(pred) if i]
    masks = np.zeros((len(ids) + 1, 1, *pred.shape), np.float32)
    for k, i in enumerate(ids):
        obj = pred == i
        masks[k, 0][ndimage.binary_dilation(obj)] = 0.3
        masks[k, 0][obj] = 0.9
    masks[-1, 0][ndimage.binary_dilation(pred == ids[0], iterations=2)] = 0.8
    return torch.from_numpy(masks)


def true_masks(true: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([true == i for i in np.unique(true) if i]).astype(np.uint8))


def make_case(dsb_root: Path, count: int) -> dict[str, list[np.ndarray]]:
    case: dict[str, list[np.ndarray]] = {"true": [], "pred": [], "scores": [], "crowd": []}
    for k, folder in enumerate(image_folders(dsb_root / "stage1_train")[:count]):
        true = true_labels(folder)
        pred = perturb(true, k)
        n_true, n_pred = len(np.unique(true)) - 1, len(np.unique(pred)) - 1
        crowd = np.zeros(n_true, np.int64)
        if k == 1:
            crowd[-1] = 1  # one crowd region: COCOeval ignores detections in it
        case["true"].append(true)
        case["pred"].append(pred)
        case["scores"].append(detection_scores(n_pred + 1, k))
        case["crowd"].append(crowd)
    return case


def evaluate(case: dict[str, list[np.ndarray]], batches: list[list[int]]) -> dict[str, Any]:
    """DSBScore and COCOMaskMetrics updated batch by batch with the images ``batches`` of ``case``, then computed
    (synchronised across the processes when a process group exists)."""
    from zoo.core.instance_metrics import COCOMaskMetrics, DSBScore

    dsb, coco = DSBScore(), COCOMaskMetrics()
    for batch in batches:
        dsb.update(
            [torch.from_numpy(case["pred"][i]) for i in batch], [torch.from_numpy(case["true"][i]) for i in batch]
        )
        coco.update(
            [{"masks": soft_masks(case["pred"][i]), "scores": torch.from_numpy(case["scores"][i])} for i in batch],
            [{"masks": true_masks(case["true"][i]), "iscrowd": torch.from_numpy(case["crowd"][i])} for i in batch],
        )
    return {"dsb": float(dsb.compute()), "dsb_summary": dsb.summary(), "mask": coco.compute(),
            "local_images": sum(len(b) for b in batches)}  # fmt: skip


# -- workers -----------------------------------------------------------------------------------------------------------
def metrics_worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
                            world_size=args.world_size, timeout=timedelta(seconds=args.hang_timeout))  # fmt: skip
    cases = pickle.loads(args.inputs.read_bytes())
    result = {"world_size": dist.get_world_size()}
    for name in SHARES:  # the same order on every rank: the collectives pair up
        result[name] = evaluate(cases[name], SHARES[name][args.rank])
    (args.out / f"metrics_rank{args.rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def noisy_instances(target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mask R-CNN-style detections (boxes, labels, scores, masks ``(N, 1, H, W)``) of one image: its nuclei
    perturbed (:func:`perturb`, :func:`soft_masks`) by a rule fixed by the image id."""
    from datamodules.coco import mask_boxes
    from datamodules.instance_targets import labels_from_masks

    seed = int(target["image_id"])
    pred = perturb(labels_from_masks(target["masks"].numpy()), seed)
    masks = soft_masks(pred)
    scores = torch.from_numpy(detection_scores(len(masks), seed))
    boxes = torch.from_numpy(mask_boxes((masks[:, 0] >= 0.5).numpy()))
    return {"boxes": boxes, "labels": torch.ones(len(masks), dtype=torch.int64), "scores": scores, "masks": masks}


def detector_worker(args: argparse.Namespace) -> None:
    import pytorch_lightning as pl

    from datamodules.nuclei_instances import NucleiImages, NucleiInstanceDataModule, load_nuclei_image
    from zoo.detection import InstanceDetector, ObjectDetector

    class NoisyNetwork(ObjectDetector):
        """Stands in for the network in ObjectDetector's evaluation: the detections are noisy truth."""

        def _evaluate(self, batch: dict[str, Any], metric: Any) -> list[dict[str, torch.Tensor]]:
            preds = [noisy_instances(target) for target in batch["targets"]]
            metric.update(preds, batch["targets"])
            stage = "test" if metric is self.test_map else "validate"
            self.seen[stage] += [int(t["image_id"]) for t in batch["targets"]]
            return preds

    class NoisyInstanceDetector(InstanceDetector, NoisyNetwork):
        """InstanceDetector whose ``super()._evaluate`` (the network's detections) is NoisyNetwork's."""

        seen: dict[str, list[int]]

    class FiveNuclei(NucleiInstanceDataModule):
        """The data module's evaluation loaders on 5 chosen DSB2018 images (no training images)."""

        def setup(self, stage: str | None = None) -> None:
            if self.val_images is not None:
                return
            folders = image_folders(Path(self.data_dir) / "stage1_train")
            skipped: Counter = Counter()
            self.train_images = []
            self.val_images = [
                load_nuclei_image(
                    f.name, k, f / "images" / f"{f.name}.png", sorted((f / "masks").glob("*.png")), skipped
                )  # fmt: skip
                for k, f in enumerate(folders)
            ]
            self.val_set = NucleiImages(self.val_images)

    torch.set_num_threads(1)  # two processes share the machine's cores
    pl.seed_everything(0, verbose=False)
    dm = FiveNuclei(data_dir=str(args.data_dir), eval_batch_size=2, augment=False)
    model = NoisyInstanceDetector("maskrcnn_mobilenet_v3_large_fpn", num_classes=1, class_names=["nucleus"],
                                  image_size=64, log_images=0)  # fmt: skip
    model.seen = {"validate": [], "test": []}
    trainer = pl.Trainer(
        accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(args.out),
    )  # fmt: skip
    val = trainer.validate(model, datamodule=dm, verbose=False)[0]
    test = trainer.test(model, datamodule=dm, verbose=False)[0]
    result = {"world_size": trainer.world_size, "validate": {k: float(v) for k, v in val.items()},
              "test": {k: float(v) for k, v in test.items()}, "seen": model.seen}  # fmt: skip
    (args.out / f"detector_rank{trainer.global_rank}.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("worker", choices=["metrics", "detector"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--inputs", type=Path)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world-size", type=int, default=WORLD_SIZE)
    parser.add_argument("--port", type=int)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--devices", type=int, default=WORLD_SIZE)
    parser.add_argument("--hang-timeout", type=float, default=TIMEOUT)
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>` shows where a rank waits
    faulthandler.dump_traceback_later(args.hang_timeout, exit=True)  # a hang prints every stack and exits
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        (metrics_worker if args.worker == "metrics" else detector_worker)(args)
    except Exception:  # recorded for the test, which shows it
        rank = int(os.environ.get("LOCAL_RANK", args.rank))
        (args.out / f"{args.worker}_rank{rank}.error").write_text(traceback.format_exc())
        raise


# -- the tests ---------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(commands: list[list[str]], out: Path, what: str) -> None:
    """Run the commands side by side (one per rank, output to ``out/launch_<i>.log``); fail naming ``what`` on a
    timeout. Exit codes are left to the result files (a rank that failed wrote an ``.error`` file instead)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    logs = [(out / f"launch_{i}.log").open("w") for i in range(len(commands))]
    procs = [subprocess.Popen(c, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT) for c, log in zip(
        commands, logs, strict=True)]  # fmt: skip
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT + 60)  # the workers exit by themselves at TIMEOUT (faulthandler): a backstop
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{what} did not finish in {TIMEOUT + 60} s")
    finally:
        for log in logs:
            log.close()


def read(folder: Path, worker: str, rank: int) -> dict[str, Any]:
    path = folder / f"{worker}_rank{rank}.json"
    if not path.is_file():
        errors = sorted(folder.glob(f"{worker}_rank*.error")) + sorted(folder.glob("launch_*.log"))
        errors = [e for e in errors if e.stat().st_size]
        detail = errors[0].read_text()[-3000:] if errors else "no result and no error file"
        pytest.fail(f"{worker}: rank {rank} wrote no result:\n{detail}")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def cases(dsb_root: Path) -> dict[str, dict[str, list[np.ndarray]]]:
    whole = make_case(dsb_root, 5)
    tied = {**whole, "scores": [np.where(s > 0.6, np.float32(1.0), s) for s in whole["scores"]]}
    out = {"uneven": whole, "idle_rank": {k: v[:1] for k, v in whole.items()}, "tied_scores": tied}
    scores = np.concatenate(whole["scores"])
    assert len(np.unique(scores)) == len(scores), "tied scores: COCOeval would rank them by image order"
    return out


@pytest.fixture(scope="module")
def single(cases: dict[str, dict[str, list[np.ndarray]]]) -> dict[str, dict[str, Any]]:
    return {name: evaluate(cases[name], SINGLE[name]) for name in SHARES}


@pytest.fixture(scope="module")
def two_ranks(cases: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("instance_metrics_ddp")
    inputs = out / "inputs.pkl"
    inputs.write_bytes(pickle.dumps(cases))
    port = free_port()
    launch([[sys.executable, __file__, "metrics", "--out", str(out), "--inputs", str(inputs), "--rank", str(rank),
             "--world-size", str(WORLD_SIZE), "--port", str(port), "--hang-timeout", str(TIMEOUT)]
            for rank in range(WORLD_SIZE)], out, "the 2-process metric evaluation")  # fmt: skip
    return [read(out, "metrics", rank) for rank in range(WORLD_SIZE)]


def test_the_perturbed_predictions_give_non_trivial_numbers(single: dict[str, dict[str, Any]]) -> None:
    # what the DDP comparison below relies on: a lost or repeated image would move every number
    whole = single["uneven"]
    summary = whole["dsb_summary"]
    assert 0.3 < whole["dsb"] < 0.95, whole["dsb"]
    assert summary["images"] == 5 and summary["merged"] == 5  # one merge per image
    assert summary["tp"][0] > summary["tp"][-1] > 0  # erosion: fewer hits at IoU 0.95 than at 0.5
    assert 0.2 < whole["mask"]["map"] < 0.9 and whole["mask"]["map_50"] > whole["mask"]["map_75"]
    assert len({round(r["dsb"], 9) for r in single.values()}) == 2  # the 1-image case differs from the 5-image one


@pytest.mark.parametrize("case", list(SHARES))
def test_dsb_score_on_two_processes_equals_one_process(
    two_ranks: list[dict[str, Any]], single: dict[str, dict[str, Any]], case: str
) -> None:
    expected = single[case]
    assert sum(r[case]["local_images"] for r in two_ranks) == sum(map(len, SINGLE[case]))
    for rank, result in enumerate(two_ranks):
        got = result[case]
        assert result["world_size"] == WORLD_SIZE
        # float64 sums added in another order on 2 processes: equal to rounding; a lost image moves them by ~1e-2
        assert got["dsb"] == pytest.approx(expected["dsb"], rel=1e-6), f"compute() on rank {rank}"
        summary, whole = got["dsb_summary"], expected["dsb_summary"]
        assert summary.keys() == whole.keys()
        for key in DSB_INTEGER_KEYS:
            assert summary[key] == whole[key], f"summary()[{key!r}] on rank {rank}"
        for key, value in whole.items():
            if key not in DSB_INTEGER_KEYS:
                message = f"summary()[{key!r}] on rank {rank}"
                np.testing.assert_allclose(summary[key], value, rtol=1e-12, err_msg=message)


@pytest.mark.parametrize("case", DISTINCT_SCORES)
def test_coco_mask_map_on_two_processes_equals_one_process(
    two_ranks: list[dict[str, Any]], single: dict[str, dict[str, Any]], case: str
) -> None:
    # the gathered RLEs are the same images' (in another order: ranks concatenated), every score distinct: the
    # COCOeval numbers must be equal exactly, not only close
    expected = single[case]["mask"]
    assert set(expected) >= {"map", "map_50", "map_75", "mar_100"}
    for rank, result in enumerate(two_ranks):
        assert result[case]["mask"] == expected, f"rank {rank}"


def test_coco_mask_map_with_tied_scores_on_two_processes_equals_one_process(
    two_ranks: list[dict[str, Any]], single: dict[str, dict[str, Any]]
) -> None:
    expected = single["tied_scores"]["mask"]
    assert expected != single["uneven"]["mask"], "the saturated scores change the ranking"
    for rank, result in enumerate(two_ranks):
        assert result["tied_scores"]["mask"] == pytest.approx(expected, rel=1e-9), f"rank {rank}"


@pytest.fixture(scope="module")
def detector_runs(dsb_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    out = {}
    for devices in (1, 2):
        out[devices] = tmp_path_factory.mktemp(f"instance_detector_ddp{devices}")
        command = [sys.executable, __file__, "detector", "--out", str(out[devices]), "--devices", str(devices),
                   "--data-dir", str(dsb_root), "--hang-timeout", str(TIMEOUT)]  # fmt: skip
        launch([command], out[devices], f"InstanceDetector on {devices} process(es)")  # Lightning starts rank 1
    return out


def test_instance_detector_metrics_on_two_processes_equal_one_process(detector_runs: dict[int, Path]) -> None:
    single = read(detector_runs[1], "detector", 0)
    ranks = [read(detector_runs[2], "detector", r) for r in range(WORLD_SIZE)]
    assert single["world_size"] == 1 and all(r["world_size"] == WORLD_SIZE for r in ranks)
    for stage in ("validate", "test"):
        expected = single[stage]
        assert {"dsb_score", "f1_50", "mask_map", "mask_map_50", "map"} <= {k.split("/")[-1] for k in expected}
        prefix = "val" if stage == "validate" else "test"
        assert 0 < expected[f"{prefix}/dsb_score"] < 1 and 0 < expected[f"{prefix}/mask_map"] < 1, expected
        for rank, result in enumerate(ranks):
            got = result[stage]
            assert got.keys() == expected.keys(), f"{stage} rank {rank}"
            for key, value in expected.items():
                # logged as float32; the COCO numbers are equal exactly, the DSB score to float32 rounding
                assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (
                    f"{stage} {key}: {got[key]} on rank {rank} of 2, {value} on 1 process"
                )


def test_instance_detector_evaluates_every_image_once_on_two_processes(detector_runs: dict[int, Path]) -> None:
    single = read(detector_runs[1], "detector", 0)
    ranks = [read(detector_runs[2], "detector", r) for r in range(WORLD_SIZE)]
    for stage in ("validate", "test"):
        everything = Counter(single["seen"][stage])
        assert len(everything) == len(NAME_PREFIXES) and max(everything.values()) == 1
        per_rank = [Counter(r["seen"][stage]) for r in ranks]
        assert all(per_rank), f"{stage}: a rank evaluated nothing"
        assert per_rank[0] + per_rank[1] == everything, f"{stage}: images missing or repeated under DDP"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a file: the project root is not on sys.path otherwise
    main()
