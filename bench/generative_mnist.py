"""Generative models on real MNIST, each trained for a fixed CPU budget.

Each model trains through the zoo's CLI with its shipped config (``configs/generative/``), exactly
as ``python train.py fit`` does, stopped by ``trainer.max_time`` after ``--minutes`` (validation,
logging and checkpointing off: the evaluation below happens once, after training). Then, on the
official 10,000-image MNIST test set:

* VAE, GAN, DCGAN: FID (Heusel et al. 2017, eq. 6) on the zoo's feature classifier (LeNet-5 trained
  one epoch on the MNIST training split; its 84 F6 features, ``zoo.generative.features``) between
  ``--fid-samples`` generated images and the test set, and the leave-one-out 1-NN accuracy
  (Lopez-Paz & Oquab 2017; 0.5 is ideal) of ``--nn-samples`` generated vs as many test images, on the
  same features and on pixels. The **baseline** row compares real test images with real training
  images: the best a model can score with these sample sizes.
* AE, DAE: reconstruction MSE per pixel ([0, 1] images) on the test set; the DAE also its
  denoising MSE (test images with its training corruption).
* anomaly: a convolutional autoencoder per held-out digit (``--anomaly-minutes`` each), AUROC of
  the per-image reconstruction error for "held-out digit vs the rest" on the test set.

Writes ``bench/results/generative_mnist.json`` and ``docs/generative/<model>_samples.png``.

    python bench/generative_mnist.py --minutes 10
    python bench/generative_mnist.py --minutes 0.5 --models vae dcgan --anomaly-digits 0 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torchvision.utils import save_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, data_dir, machine, markdown_table, write_json  # noqa: E402

from datamodules import MNISTDataModule  # noqa: E402
from zoo.cli import main  # noqa: E402
from zoo.evaluation.fid_features import train_feature_classifier  # noqa: E402
from zoo.generative.features import ClassifierFeatures  # noqa: E402
from zoo.generative.metrics import extract_features, frechet_distance, one_nn_accuracy  # noqa: E402

CONFIGS = {
    "ae": "mnist_ae.yaml",
    "conv_ae": "mnist_conv_ae.yaml",
    "dae": "mnist_dae.yaml",
    "vae": "mnist_vae.yaml",
    "gan": "mnist_gan.yaml",
    "dcgan": "mnist_dcgan.yaml",
    "anomaly": "mnist_anomaly.yaml",
}
SAMPLERS = ("vae", "gan", "dcgan")
DOCS = ROOT / "docs" / "generative"


def train(name: str, minutes: float, data: str, extra: list[str]) -> tuple[pl.LightningModule, dict]:
    seconds = max(1, round(minutes * 60))
    cli = main(
        ["--config", str(ROOT / "configs" / "generative" / CONFIGS[name]), f"--data.init_args.data_dir={data}",
         "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.callbacks=null",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--trainer.max_epochs=-1", f"--trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}",
         "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
         "--model.init_args.fid_classifier=null",
         # the CLI saves its config.yaml into the trainer's root folder: a temporary one, not the caller's cwd
         f"--trainer.default_root_dir={tempfile.mkdtemp(prefix='generative_mnist_')}", *extra],
        run=False,
    )
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    info = {"train_seconds": round(time.perf_counter() - start, 1), "epochs": cli.trainer.current_epoch,
            "steps": cli.trainer.global_step}
    return cli.model.eval(), info


def test_images(data: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test images and labels in [0, 1], and the training images in [0, 1] (for the baseline)."""
    dm = MNISTDataModule(data_dir=data, download=False, normalization="unit", val_size=0)
    dm.setup("fit")
    dm.setup("test")
    return dm.test_set.images, dm.test_set.labels, dm.train_set.images


@torch.no_grad()
def generate(model: pl.LightningModule, n: int) -> torch.Tensor:
    return torch.cat([model.to_unit(model.sample(min(1000, n - i))).clamp(0, 1) for i in range(0, n, 1000)])


def quality(extractor: ClassifierFeatures, real: torch.Tensor, fake: torch.Tensor, nn_samples: int) -> dict:
    real_f, fake_f = extract_features(extractor, real), extract_features(extractor, fake)
    return {
        "fid": float(frechet_distance(real_f, fake_f)),
        "nn_acc_features": float(one_nn_accuracy(real_f[:nn_samples], fake_f[:nn_samples])),
        "nn_acc_pixels": float(one_nn_accuracy(real[:nn_samples], fake[:nn_samples])),
    }


@torch.no_grad()
def reconstruction_mse(model: pl.LightningModule, images: torch.Tensor, corrupt: bool = False) -> float:
    total = 0.0
    generator = torch.Generator().manual_seed(0)
    for i in range(0, len(images), 1000):
        x = model.from_unit(images[i : i + 1000])
        inputs = model.corrupt(x, generator) if corrupt else x
        total += float((model.to_unit(model(inputs)) - images[i : i + 1000]).square().sum())
    return total / images.numel()


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    parser.add_argument("--models", nargs="+", default=["ae", "dae", "vae", "gan", "dcgan", "anomaly"],
                        choices=list(CONFIGS))
    parser.add_argument("--anomaly-minutes", type=float, default=1.0, help="budget per held-out digit")
    parser.add_argument("--anomaly-digits", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--fid-samples", type=int, default=10_000)
    parser.add_argument("--nn-samples", type=int, default=2_000)
    parser.add_argument("--fid-classifier", default=str(ROOT / "runs" / "fid" / "fid_lenet5_mnist.ckpt"),
                        help="ImageClassifier checkpoint for the features; trained (1 epoch LeNet-5) if missing")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's). On a machine shared with other jobs, 1 thread "
                             "can be several times faster than 2: OpenMP threads wait for each other.")
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    parser.add_argument("extra", nargs="*", help="more CLI overrides for every model")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # the CLI below gets its arguments explicitly, not this script's
    if args.threads:
        torch.set_num_threads(args.threads)
    data = data_dir(args.data_dir)
    if not Path(args.fid_classifier).is_file():
        train_feature_classifier(args.fid_classifier, data)
    extractor = ClassifierFeatures.from_checkpoint(args.fid_classifier)
    test_x, test_y, train_x = test_images(data)
    gen = torch.Generator().manual_seed(0)
    real_fid = test_x[torch.randperm(len(test_x), generator=gen)[: args.fid_samples]]
    DOCS.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    baseline_train = train_x[torch.randperm(len(train_x), generator=gen)[: args.fid_samples]]
    results["baseline"] = {"what": "real MNIST train vs test", **quality(extractor, real_fid, baseline_train,
                                                                          args.nn_samples)}
    print(f"baseline (real train vs real test): {results['baseline']}", flush=True)

    for name in args.models:
        if name == "anomaly":
            continue
        pl.seed_everything(args.seed, verbose=False)
        model, info = train(name, args.minutes, data, [f"--seed_everything={args.seed}", *args.extra])
        entry: dict = {**info, "budget_minutes": args.minutes, "config": f"configs/generative/{CONFIGS[name]}"}
        if name in SAMPLERS:
            torch.manual_seed(args.seed)
            fake = generate(model, args.fid_samples)
            entry.update(quality(extractor, real_fid, fake, args.nn_samples))
            save_image(fake[:64], DOCS / f"{name}_samples.png", nrow=8, padding=2)
        else:
            entry["test_mse"] = reconstruction_mse(model, test_x)
            if name == "dae":
                entry["test_denoise_mse"] = reconstruction_mse(model, test_x, corrupt=True)
            x = model.from_unit(test_x[:32])
            with torch.no_grad():
                corrupted = model.corrupt(x, torch.Generator().manual_seed(0)) if name == "dae" else x
                rows = [x, corrupted, model(corrupted)] if name == "dae" else [x, model(x)]
            grid = torch.cat([row[i : i + 8] for i in range(0, 32, 8) for row in rows])
            save_image(model.to_unit(grid).clamp(0, 1), DOCS / f"{name}_samples.png", nrow=8, padding=2)
        results[name] = entry
        print(f"{name}: {entry}", flush=True)

    if "anomaly" in args.models:
        from torchmetrics.functional.classification import binary_auroc

        per_digit = {}
        for digit in args.anomaly_digits:
            pl.seed_everything(args.seed, verbose=False)
            model, info = train("anomaly", args.anomaly_minutes, data,
                                [f"--seed_everything={args.seed}", f"--data.init_args.anomaly_class={digit}",
                                 *args.extra])
            scores = torch.cat([model.anomaly_score(test_x[i : i + 1000]) for i in range(0, len(test_x), 1000)])
            per_digit[str(digit)] = {**info, "auroc": float(binary_auroc(scores, (test_y == digit).long()))}
            print(f"anomaly digit {digit}: {per_digit[str(digit)]}", flush=True)
        results["anomaly"] = {"budget_minutes_per_digit": args.anomaly_minutes, "per_digit": per_digit,
                              "config": "configs/generative/mnist_anomaly.yaml"}

    rows = []
    for name in ["baseline", *[m for m in args.models if m in SAMPLERS]]:
        r = results[name]
        rows.append([name, r["fid"], r["nn_acc_features"], r["nn_acc_pixels"], r.get("steps"), r.get("train_seconds")])
    table = markdown_table(["model", "FID (LeNet-5 F6)", "1-NN acc (features)", "1-NN acc (pixels)", "steps",
                            "train s"], rows)
    recon_rows = [[n, results[n]["test_mse"], results[n].get("test_denoise_mse"), results[n]["steps"],
                   results[n]["train_seconds"]] for n in args.models if n in ("ae", "conv_ae", "dae")]
    recon_table = markdown_table(["model", "test MSE", "denoising MSE", "steps", "train s"], recon_rows)
    print(f"\nMNIST test set, {args.minutes:g} min per model on {machine()['cpu']}\n")
    print(table)
    if recon_rows:
        print()
        print(recon_table)
    if "anomaly" in results:
        per_digit = results["anomaly"]["per_digit"]
        print()
        print(markdown_table(["held-out digit", *per_digit], [["AUROC", *[v["auroc"] for v in per_digit.values()]]]))
    payload = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "torch_threads": torch.get_num_threads(),
        "feature_extractor": "LeNet-5 (zoo.classification, lenet5) trained 1 epoch on the MNIST training split; "
                             "features: input of classifier.3 (the 84 F6 activations)",
        "results": results,
        "table_md": table,
    }
    print(f"\nwritten: {write_json('generative_mnist', payload, args.out)}")


if __name__ == "__main__":
    main_bench()
