"""Every interpretation method on a zoo classifier trained on real MNIST.

Trains ``configs/classification/mnist.yaml`` (``--epochs``, through the zoo's CLI) unless
``--ckpt`` names a checkpoint, then on the same few test digits runs every method of
``zoo.interpret`` and writes figures to ``docs/interpret/`` (``overview.png`` for the README), and
measures: FGSM success rate against epsilon (pixel units), the success rate of a universal
perturbation fitted on validation digits on held-out test digits, retrieval precision@10 of
feature-space neighbours (against raw pixels), and the runtime per method per image.

    python bench/interpret_mnist.py                       # trains ~1 min, then ~3-5 min of methods
    python bench/interpret_mnist.py --ckpt runs/mnist_convnet/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, data_dir, machine, markdown_table, write_json  # noqa: E402

import zoo.interpret as zi  # noqa: E402
from datamodules import MNISTDataModule  # noqa: E402
from zoo.classification import ImageClassifier  # noqa: E402
from zoo.interpret.plotting import denormalize, heatmap, plot_grid, save_figure, scale01  # noqa: E402

MEAN, STD = MNISTDataModule.mean, MNISTDataModule.std
BOUNDS = ((0 - MEAN[0]) / STD[0], (1 - MEAN[0]) / STD[0])


def train(data: str, epochs: int, max_steps: int, out: Path) -> Path:
    from zoo.cli import main

    cli = main(["--config", str(ROOT / "configs/classification/mnist.yaml"), "--seed_everything=0",
                f"--data.init_args.data_dir={data}", f"--trainer.max_epochs={epochs}",
                f"--trainer.max_steps={max_steps}", "--trainer.logger=false",
                "--trainer.enable_checkpointing=false", "--trainer.callbacks=null",
                "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    out.parent.mkdir(parents=True, exist_ok=True)
    cli.trainer.save_checkpoint(out)
    return out


def timed(fn, n: int):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - start) / n


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="an ImageClassifier checkpoint trained on MNIST (default: train one)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop training earlier (-1: all epochs)")
    parser.add_argument("--fast", action="store_true", help="fewer optimisation steps and samples (a busy CPU)")
    parser.add_argument("--digits", type=int, nargs="+", default=[0, 1, 2, 3], help="MNIST test indices shown")
    parser.add_argument("--universal-c", type=float, default=0.1,
                        help="weight c of |r| in the universal perturbation's objective c|r| + L(x + r, k): "
                        "smaller c buys success with a larger perturbation")
    parser.add_argument("--data-dir")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "interpret"))
    parser.add_argument("--out")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = data_dir(args.data_dir)
    docs = Path(args.docs)
    t0 = time.perf_counter()
    default_ckpt = ROOT / "runs" / "interpret_bench" / "mnist.ckpt"
    ckpt = Path(args.ckpt) if args.ckpt else train(data, args.epochs, args.max_steps, default_ckpt)
    train_s = time.perf_counter() - t0
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = MNISTDataModule(data_dir=data, download=False, val_size=5000)
    dm.setup("fit")
    dm.setup("test")
    test_x, test_y = dm.test_set.images, dm.test_set.labels
    with torch.no_grad():
        test_acc = float(torch.cat([model(test_x[i : i + 2000]).argmax(1) for i in range(0, 10000, 2000)])
                         .eq(test_y).float().mean())
    print(f"checkpoint {ckpt}: test accuracy {test_acc:.4f}")

    opt_steps = 100 if args.fast else 200  # optimisation steps of class model, inversion, style
    n_tsne = 1000 if args.fast else 2000
    x, y = test_x[args.digits], test_y[args.digits]
    n = len(x)
    runtimes: dict[str, float] = {}
    maps: dict[str, torch.Tensor] = {}
    attribution = {"saliency": {}, "smoothgrad": {"samples": 25}, "guided_backprop": {},
                   "occlusion": {"patch": 7, "stride": 2}, "cam": {}, "grad_cam": {}}
    for name, kwargs in attribution.items():
        maps[name], runtimes[name] = timed(lambda name=name, kwargs=kwargs: getattr(zi, name)(model, x, y, **kwargs), n)

    # activations, filters, top patches
    layer = "features.6"
    (acts, runtimes["activations"]) = timed(lambda: zi.activations(model, x, [layer, "features.10"]), n)
    big = torch.nn.functional.interpolate(x[:1], size=(56, 56), mode="bilinear", align_corners=False)
    big_acts = zi.activations(model, big, "features.10")["features.10"]
    save_figure(plot_grid(acts[layer][0, :16], [str(c) for c in range(16)], suptitle=f"{layer} of digit "
                          f"{int(y[0])} (first 16 of {acts[layer].shape[1]} channels)"), docs / "activations.png")
    save_figure(plot_grid(big_acts[0, :16], suptitle=f"features.10 on a 56x56 input: {tuple(big_acts.shape[1:])}"),
                docs / "activations_56px.png")
    filters = zi.first_layer_filters(model)
    save_figure(plot_grid(filters, suptitle="first-layer 3x3 filters"), docs / "filters.png")
    top, t_top = timed(lambda: zi.top_activating_patches(model, test_x[:2000], layer, channel=5, k=9), 2000)
    runtimes["top_patches"] = t_top
    save_figure(plot_grid(denormalize(top.patches, MEAN, STD), [f"{v:.1f}" for v in top.values.tolist()],
                          scale_each=False, ncols=9, suptitle=f"{layer} ch 5: top-9 of 2000 test digits, receptive "
                          f"field {top.receptive_field.size[0]}px"), docs / "top_patches.png")
    print(zi.layer_table(model, (1, 1, 28, 28)))

    # optimisation-based
    class_models = []
    start = time.perf_counter()
    for c in range(10):
        class_models.append(zi.class_model(model, c, steps=opt_steps, bounds=BOUNDS).image)
    runtimes["class_model"] = (time.perf_counter() - start) / 10
    with torch.no_grad():
        cm_pred = model(torch.cat(class_models)).argmax(1)
    save_figure(plot_grid(denormalize(torch.cat(class_models), MEAN, STD), [f"class {c}" for c in range(10)],
                          ncols=10, scale_each=False), docs / "class_models.png")
    dreams, runtimes["deepdream"] = timed(lambda: [zi.deep_dream(model, x[i : i + 1], layer, steps=20, octaves=2,
                                                                 bounds=BOUNDS).image for i in range(n)], n)
    inversions, runtimes["feature_inversion"] = timed(lambda: [zi.invert_features(
        model, x[i : i + 1], layer, steps=opt_steps, bounds=BOUNDS) for i in range(n)], n)
    style_layers = ["features.2", "features.6"]
    styled, runtimes["style_transfer"] = timed(lambda: zi.style_transfer(
        model, x[:1], x[1:2], content_layers=["features.10"], style_layers=style_layers, steps=opt_steps,
        bounds=BOUNDS), 1)
    texture, runtimes["texture_synthesis"] = timed(lambda: zi.synthesize_texture(model, x[2:3], style_layers,
                                                                                   steps=opt_steps, bounds=BOUNDS), 1)
    save_figure(plot_grid(denormalize(torch.cat([x[:1], x[1:2], styled.image, x[2:3], texture.image]), MEAN, STD),
                          ["content", "style", "style transfer", "texture source", "synthesised"], scale_each=False,
                          size=2.0), docs / "style.png")

    # adversarial
    fgsm_adv, runtimes["fgsm"] = timed(lambda: zi.fgsm(model, x, y, 0.15 / STD[0], bounds=BOUNDS), n)
    attack, runtimes["targeted_attack"] = timed(lambda: zi.iterative_attack(
        model, x, (y + 1) % 10, 0.2 / STD[0], steps=20, bounds=BOUNDS), n)
    eval_x, eval_y = test_x[:2000], test_y[:2000]
    with torch.no_grad():
        correct = model(eval_x).argmax(1) == eval_y
    fgsm_curve = []
    for eps in (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3):
        r = zi.fgsm(model, eval_x[correct], eval_y[correct], eps / STD[0], bounds=BOUNDS)
        fgsm_curve.append({"epsilon": eps, "success_rate": r.success_rate,
                           "accuracy_under_attack": float((r.pred_after == eval_y[correct]).float().mean()) *
                           float(correct.float().mean())})
    target_k = 7
    uni, runtimes["universal_fit_total"] = timed(lambda: zi.universal_perturbation(
        model, dm.val_set.images[:2000], target_k, c=args.universal_c, steps=opt_steps, lr=0.05, bounds=BOUNDS), 1)
    uni_stats = zi.perturbation_success(model, test_x[2000:4000], uni.perturbation, target_k, bounds=BOUNDS)
    uni_stats.update({"target": target_k, "l2_pixels": uni.l2 * STD[0], "linf_pixels": uni.linf * STD[0],
                      "fit_on": "2000 validation digits (training split)", "held_out": "test digits 2000-3999"})
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].plot([p["epsilon"] for p in fgsm_curve], [p["success_rate"] for p in fgsm_curve], "o-")
    axes[0].set(xlabel="epsilon (pixel units, L-inf)", ylabel="FGSM success rate", title="FGSM on 2000 test digits")
    axes[0].grid(alpha=0.3)
    axes[1].imshow(uni.perturbation[0, 0].numpy() * STD[0], cmap="RdBu_r")
    axes[1].set_title(f"universal r -> class {target_k}: {uni_stats['success_rate']:.0%} of held-out", fontsize=9)
    axes[1].axis("off")
    fig.tight_layout()
    save_figure(fig, docs / "adversarial.png")

    # neighbours
    emb, t_emb = timed(lambda: zi.embed(model, test_x), len(test_x))
    runtimes["embed"] = t_emb
    idx, _ = zi.nearest_neighbours(emb[:1000], emb, k=10, exclude_self=True)
    p10 = zi.precision_at_k(test_y[:1000], test_y, idx)
    raw_idx, _ = zi.nearest_neighbours(test_x[:1000].flatten(1), test_x.flatten(1), k=10, exclude_self=True)
    p10_raw = zi.precision_at_k(test_y[:1000], test_y, raw_idx)
    points, t_tsne = timed(lambda: zi.tsne(emb[:n_tsne]), 1)
    save_figure(zi.plot_tsne(points, test_y[:n_tsne].numpy(), title="t-SNE of last-hidden-layer embeddings "
                             f"({n_tsne} test digits)"), docs / "tsne.png")
    rows = [torch.cat([test_x[[q]], test_x[idx[q, :7]]]) for q in args.digits]
    save_figure(plot_grid(denormalize(torch.cat(rows), MEAN, STD), ncols=8, scale_each=False,
                          suptitle="query | its 7 nearest neighbours in feature space"), docs / "neighbours.png")

    # the overview: every method on the same digits
    columns = ["input", "saliency", "smoothgrad", "guided_backprop", "occlusion", "cam", "grad_cam",
               "FGSM (0.15)", "targeted attack", "deepdream", "inversion"]
    fig, axes = plt.subplots(n, len(columns), figsize=(1.45 * len(columns), 1.6 * n), squeeze=False)
    shown = denormalize(x, MEAN, STD)
    for i in range(n):
        cells = [(shown[i, 0], "gray")]
        for name in attribution:
            m = maps[name][i]
            cells.append((scale01(m[None])[0, 0] if name == "guided_backprop" else heatmap(m), "gray" if
                          name == "guided_backprop" else "jet"))
        cells += [(denormalize(fgsm_adv.adversarial[i : i + 1], MEAN, STD)[0, 0], "gray"),
                  (denormalize(attack.adversarial[i : i + 1], MEAN, STD)[0, 0], "gray"),
                  (denormalize(dreams[i], MEAN, STD)[0, 0], "gray"),
                  (denormalize(inversions[i].image, MEAN, STD)[0, 0], "gray")]
        for j, (img, cmap) in enumerate(cells):
            ax = axes[i, j]
            if cmap == "jet":
                ax.imshow(shown[i, 0], cmap="gray")
                ax.imshow(img, cmap="jet", alpha=0.55)
            else:
                ax.imshow(img, cmap=cmap)
            ax.axis("off")
            if i == 0:
                ax.set_title(columns[j], fontsize=7)
        axes[i, 7].text(0, 31, f"-> {int(fgsm_adv.pred_after[i])}", fontsize=7, va="top")
        axes[i, 8].text(0, 31, f"-> {int(attack.pred_after[i])}", fontsize=7, va="top")
    fig.tight_layout()
    save_figure(fig, docs / "overview.png", dpi=100)

    table = [[name, 1000 * s] for name, s in runtimes.items()]
    info = machine()
    print(f"\nMNIST interpretability ({info['cpu']}, {torch.get_num_threads()} thread(s)); test acc {test_acc:.4f}")
    print(markdown_table(["method", "ms per image"], table))
    print(markdown_table(["FGSM epsilon (pixels)", "success rate", "accuracy under attack"],
                         [[p["epsilon"], p["success_rate"], p["accuracy_under_attack"]] for p in fgsm_curve]))
    print(f"universal perturbation -> {target_k}: success {uni_stats['success_rate']:.3f} on held-out digits not "
          f"already {target_k} (base rate {uni_stats['base_rate']:.3f}); L2 {uni_stats['l2_pixels']:.2f}, "
          f"Linf {uni_stats['linf_pixels']:.2f} (pixels)")
    print(f"targeted iterative attack (eps 0.2): success {attack.success_rate:.2f}, mean Linf "
          f"{float(attack.linf.mean()) * STD[0]:.3f}; class models predicted as their class: "
          f"{int((cm_pred == torch.arange(10)).sum())}/10")
    print(f"retrieval precision@10 (1000 queries, 10000 test digits): features {p10:.4f}, raw pixels {p10_raw:.4f}")
    path = write_json("interpret_mnist", {
        "checkpoint": str(ckpt), "train_seconds": train_s if not args.ckpt else None, "test_acc": test_acc,
        "digits": args.digits, "runtime_ms_per_image": {k: 1000 * v for k, v in runtimes.items()},
        "tsne_seconds": t_tsne, "tsne_points": n_tsne, "optimisation_steps": opt_steps,
        "fgsm": fgsm_curve, "universal": uni_stats,
        "targeted_attack": {"epsilon": 0.2, "success_rate": attack.success_rate,
                            "mean_linf_pixels": float(attack.linf.mean()) * STD[0]},
        "class_model_correct": int((cm_pred == torch.arange(10)).sum()),
        "precision_at_10": {"features": p10, "raw_pixels": p10_raw},
        "style_gram_loss": [styled.style_loss[0], styled.style_loss[-1]],
        "inversion_distance": [float(np.mean([r.history[0] for r in inversions])),
                               float(np.mean([r.history[-1] for r in inversions]))],
    }, args.out)
    print(f"\nwrote {path} and figures in {docs}")


if __name__ == "__main__":
    main_bench()
