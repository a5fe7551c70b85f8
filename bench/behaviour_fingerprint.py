"""Final metrics of a short, seeded, deterministic CPU run of one config per family.

Run it before and after a refactor: the same numbers mean the same behaviour (losses, metrics,
the random streams they depend on). Each run is ``train.py fit`` on a shipped config with a step
limit, ``--seed_everything 42 --trainer.deterministic true`` and the config's logger; logs and checkpoints go to
``--workdir`` (a temporary folder by default).

    ZOO_DATA_DIR=../shared/data python bench/behaviour_fingerprint.py --out bench/results/fingerprint.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import machine  # noqa: E402

COMMON = [
    "--seed_everything", "42", "--trainer.deterministic", "true",
    "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1",
    "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
]
RUNS: dict[str, list[str]] = {
    "classification": [
        "--config", "configs/classification/mnist.yaml", "--trainer.max_steps", "40",
        "--trainer.limit_train_batches", "40", "--trainer.limit_val_batches", "4",
        "--trainer.log_every_n_steps", "1",
    ],
    "segmentation": [
        "--config", "configs/segmentation/isbi_unet.yaml", "--model.init_args.network_kwargs.base_channels", "4",
        "--model.init_args.network_kwargs.depth", "2", "--data.init_args.crop_size", "188",
        "--model.init_args.tile_size", "188", "--trainer.limit_train_batches", "4",
        "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
    ],
    "detection": [
        "--config", "configs/detection/digits_ssdlite.yaml", "--data.init_args.train_count", "32",
        "--data.init_args.val_count", "16", "--data.init_args.num_workers", "0",
        "--trainer.limit_train_batches", "4", "--trainer.log_every_n_steps", "1",
    ],
    "generative": [
        "--config", "configs/generative/mnist_vae.yaml", "--model.init_args.fid_classifier", "null",
        "--model.init_args.metric_samples", "200", "--trainer.limit_train_batches", "30",
        "--trainer.limit_val_batches", "4", "--trainer.log_every_n_steps", "1",
    ],
}


def run(family: str) -> dict[str, float]:
    from zoo.cli import main

    cli = main(["fit", *RUNS[family], *COMMON])
    return {k: round(float(v), 6) for k, v in sorted(cli.trainer.callback_metrics.items()) if v.numel() == 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/behaviour_fingerprint.json")
    parser.add_argument("--workdir", type=Path, default=None, help="where the runs write (default: a temporary folder)")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # LightningCLI gets its arguments from run(), not from this command line
    workdir = Path(tempfile.mkdtemp(prefix="fingerprint_")) if args.workdir is None else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    args.out = args.out.resolve()
    os.chdir(workdir)
    (workdir / "configs").exists() or (workdir / "configs").symlink_to(ROOT / "configs")
    results: dict[str, dict[str, float]] = {}
    for family in args.families:
        start = time.perf_counter()
        results[family] = run(family)
        print(f"{family}: {time.perf_counter() - start:.1f} s", flush=True)
    print("\n| family | metric | value |\n|---|---|---|")
    for family, metrics in results.items():
        for name, value in metrics.items():
            print(f"| {family} | {name} | {value:.6g} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
