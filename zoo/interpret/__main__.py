"""Command line: ``python -m zoo.interpret <method> --ckpt run.ckpt --images a.png b.png --out figures/``.

Every method is a subcommand with ``--help``. Images are PNG/JPG files or folders of them
(``--images``), or digits of the official MNIST test set by index (``--mnist-test 0 1 2``, read
from ``--data-dir``, default ``$ZOO_DATA_DIR``). Each writes PNG figures (per image: input, map,
overlay) and the raw arrays (``.npz``) under ``--out/<method>/``.

Normalization: a checkpoint does not record its datamodule's normalization, so it is chosen
here: ``--normalization`` names a preset (``mnist``: mean 0.1307, std 0.3081, the MNIST
datamodule's; ``fashion-mnist``; ``imagenet``; ``none``), default ``auto`` = ``mnist`` for
1-channel models and ``imagenet`` for 3-channel ones; ``--mean``/``--std`` override it. Use the
values the model was trained with.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

PRESETS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0,), (1.0,)),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
ATTRIBUTION = ("saliency", "smoothgrad", "guided-backprop", "occlusion", "cam", "grad-cam")


# -- inputs -----------------------------------------------------------------------------------------
def load_model(path: str) -> Any:
    from zoo.classification import ImageClassifier

    if not Path(path).is_file():
        raise SystemExit(f"error: checkpoint {path} not found")
    return ImageClassifier.load_from_checkpoint(path, map_location="cpu").eval()


def normalization(args: argparse.Namespace, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    preset = args.normalization
    if preset == "auto":
        preset = "mnist" if channels == 1 else "imagenet"
    mean, std = PRESETS[preset]
    mean = tuple(args.mean) if args.mean else mean
    std = tuple(args.std) if args.std else std
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        raise SystemExit(f"error: --mean/--std give {len(mean)}/{len(std)} values; the model has {channels} channels")
    return mean, std


def image_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SystemExit(f"error: folder {p} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise SystemExit(f"error: image {p} not found")
    return files


def read_image(path: Path, channels: int, convert: bool) -> torch.Tensor:
    """A file as a ``(C, H, W)`` float tensor in [0, 1]; a channel mismatch is an error unless ``convert``."""
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except OSError as err:
        raise SystemExit(f"error: cannot read image {path}: {err}") from err
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGB" if image.mode != "LA" else "L")
    have = len(image.getbands())
    if have != channels:
        if not convert:
            raise SystemExit(
                f"error: image {path} has {have} channel(s) ({image.mode}) but the model expects {channels}. "
                f"Fix: pass --convert to convert it to {'grayscale' if channels == 1 else 'RGB'}."
            )
        image = image.convert("L" if channels == 1 else "RGB")
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


def mnist_test(data_dir: str | None, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Official MNIST test digits ``(N, 1, 28, 28)`` in [0, 1] and their labels."""
    from datamodules import MNISTDataModule

    images, labels = MNISTDataModule(data_dir=data_dir, download=False).load_split(False)
    if indices is None:
        return images.float() / 255, labels
    bad = [i for i in indices if not 0 <= i < len(images)]
    if bad:
        raise SystemExit(f"error: --mnist-test index {bad[0]} is out of range (0..{len(images) - 1})")
    idx = torch.tensor(list(indices))
    return images[idx].float() / 255, labels[idx]


def load_inputs(args: argparse.Namespace, channels: int) -> tuple[torch.Tensor, list[str], torch.Tensor | None]:
    """Normalized images, a name for each, and labels when known (MNIST)."""
    mean, std = normalization(args, channels)
    names: list[str] = []
    labels = None
    if args.mnist_test:
        pixels, labels = mnist_test(args.data_dir, args.mnist_test)
        names = [f"mnist_test_{i}" for i in args.mnist_test]
    elif args.images:
        files = image_files(args.images)
        tensors = [read_image(f, channels, args.convert) for f in files]
        if args.resize:
            tensors = [torch.nn.functional.interpolate(t[None], size=tuple(args.resize), mode="bilinear",
                                                       align_corners=False)[0] for t in tensors]
        sizes = {tuple(t.shape) for t in tensors}
        if len(sizes) > 1:
            raise SystemExit(f"error: the images have different sizes {sorted(sizes)}; pass --resize H W")
        pixels = torch.stack(tensors)
        names = [f.stem for f in files]
    else:
        raise SystemExit("error: give --images FILE/FOLDER ... or --mnist-test INDEX ...")
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (pixels - m) / s, names, labels


# -- outputs ----------------------------------------------------------------------------------------
def out_dir(args: argparse.Namespace) -> Path:
    path = Path(args.out) / args.command
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_arrays(path: Path, **arrays: Any) -> None:
    np.savez_compressed(path, **{k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                                 for k, v in arrays.items()})
    print(f"wrote {path}")


def save(fig: Any, path: Path) -> None:
    from zoo.interpret.plotting import save_figure

    print(f"wrote {save_figure(fig, path)}")


# -- commands ---------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> None:  # noqa: C901 (one dispatch over the subcommands)
    import zoo.interpret as zi
    from zoo.interpret.layers import check_images, check_target
    from zoo.interpret.plotting import denormalize, plot_attribution, plot_grid

    model = load_model(args.ckpt)
    channels = model.in_channels
    out = out_dir(args)
    mean, std = normalization(args, channels)
    bounds = (min((0 - m) / s for m, s in zip(mean, std, strict=True)),
              max((1 - m) / s for m, s in zip(mean, std, strict=True)))
    cmd = args.command

    if cmd == "layers":
        table = zi.layer_table(model, (1, channels, *args.input_size))
        print(table)
        (out / "layers.txt").write_text(str(table))
        (out / "layers.json").write_text(json.dumps(table.to_dict(), indent=1))
        print(f"wrote {out / 'layers.txt'}, {out / 'layers.json'}")
        return
    if cmd == "filters":
        filters = zi.first_layer_filters(model)
        save(plot_grid(filters.flatten(0, 1)[:, None] if channels not in (1, 3) else filters,
                       suptitle="first-layer filters"), out / "filters.png")
        save_arrays(out / "filters.npz", filters=filters)
        return
    if cmd == "class-model":
        check_target(model, args.target_class, 1)
        result = zi.class_model(model, args.target_class, (1, channels, *args.input_size), steps=args.steps,
                                l2=args.l2, jitter=args.jitter, blur_sigma=args.blur_sigma, init=args.init,
                                bounds=bounds)
        save(plot_grid(denormalize(result.image, mean, std), [f"class {args.target_class}"], scale_each=False,
                       size=2.5), out / f"class_{args.target_class}.png")
        save_arrays(out / f"class_{args.target_class}.npz", image=result.image, history=result.history)
        return
    if cmd == "neighbours":
        pixels, labels = mnist_test(args.data_dir)
        pixels, labels = pixels[: args.gallery], labels[: args.gallery]
        gallery = (pixels - mean[0]) / std[0]
        emb = zi.embed(model, gallery, layer=args.layer)
        queries = args.mnist_test or list(range(5))
        idx, _dist = zi.nearest_neighbours(emb[queries], emb, k=args.k, exclude_self=False)
        for q, row in zip(queries, idx.tolist(), strict=True):
            row = [r for r in row if r != q][: args.k - 1]
            grid = torch.cat([pixels[[q]], pixels[row]])
            titles = [f"query ({int(labels[q])})"] + [str(int(labels[r])) for r in row]
            save(plot_grid(grid, titles, ncols=len(grid), scale_each=False), out / f"neighbours_{q}.png")
        points = zi.tsne(emb, seed=0)
        save(zi.plot_tsne(points, labels.numpy()), out / "tsne.png")
        save_arrays(out / "neighbours.npz", embeddings=emb, labels=labels, neighbours=idx, tsne=points)
        return

    images, names, labels = load_inputs(args, channels)
    images = check_images(model, images, try_forward=cmd not in ("activations", "deepdream", "invert",
                                                                 "top-patches", "texture"))
    with torch.no_grad():
        predicted = model(images).argmax(1) if cmd not in ("activations", "deepdream", "invert", "texture") else None
    target = None
    if getattr(args, "target", None) is not None:
        target = check_target(model, args.target, len(images))
    elif predicted is not None:
        target = predicted

    def titles() -> list[str]:
        return [f"{n}\nlabel {int(labels[i]) if labels is not None else '?'}, pred {int(predicted[i])}"
                if predicted is not None else n for i, n in enumerate(names)]

    if cmd in ATTRIBUTION:
        fn = {"saliency": zi.saliency, "smoothgrad": zi.smoothgrad, "guided-backprop": zi.guided_backprop,
              "occlusion": zi.occlusion, "cam": zi.cam, "grad-cam": zi.grad_cam}[cmd]
        kwargs: dict[str, Any] = {}
        if cmd == "smoothgrad":
            kwargs = {"samples": args.samples, "noise_level": args.noise_level}
        elif cmd == "occlusion":
            kwargs = {"patch": args.patch, "stride": args.stride}
        elif cmd == "cam":
            kwargs = {"layer": args.layer}
        elif cmd == "grad-cam":
            kwargs = {"layer": args.layer, "relu": not args.no_relu}
        start = time.perf_counter()
        maps = fn(model, images, target, **kwargs)
        print(f"{cmd}: {len(images)} image(s) in {time.perf_counter() - start:.2f} s")
        for i, name in enumerate(names):
            save(plot_attribution(images[i : i + 1], maps[i : i + 1], mean, std, [titles()[i]],
                                  method=cmd.replace("-", "_")), out / f"{name}.png")
        save_arrays(out / "maps.npz", images=images, maps=maps, target=target, names=names)
    elif cmd == "activations":
        acts = zi.activations(model, images, args.layer)
        for layer, act in acts.items():
            for i, name in enumerate(names):
                maps = act[i, : args.max_channels] if act.ndim == 4 else act[i].flatten()[None, None, None]
                save(plot_grid(maps, [str(c) for c in range(len(maps))], suptitle=f"{name}: {layer} "
                               f"{tuple(act.shape[1:])}"), out / f"{name}_{layer}.png")
        save_arrays(out / "activations.npz", **{k.replace(".", "_"): v for k, v in acts.items()})
    elif cmd == "top-patches":
        result = zi.top_activating_patches(model, images, args.layer, args.channel, k=args.k)
        save(plot_grid(denormalize(result.patches, mean, std), [f"#{int(i)}: {v:.2f}" for i, v in
                       zip(result.indices, result.values.tolist(), strict=True)], scale_each=False,
                       suptitle=f"{args.layer} channel {args.channel}, receptive field {result.receptive_field.size}"),
             out / f"{args.layer}_channel{args.channel}.png")
        save_arrays(out / f"{args.layer}_channel{args.channel}.npz", indices=result.indices, values=result.values,
                    boxes=result.boxes, patches=result.patches)
    elif cmd in ("deepdream", "invert"):
        for i, name in enumerate(names):
            if cmd == "deepdream":
                result = zi.deep_dream(model, images[i : i + 1], args.layer, channel=args.channel, steps=args.steps,
                                       octaves=args.octaves, octave_scale=args.octave_scale, bounds=bounds)
            else:
                result = zi.invert_features(model, images[i : i + 1], args.layer, steps=args.steps,
                                            tv_weight=args.tv_weight, bounds=bounds)
            both = denormalize(torch.cat([images[i : i + 1], result.image]), mean, std)
            save(plot_grid(both, ["input", f"{cmd} {args.layer}"], scale_each=False, size=2.5), out / f"{name}.png")
            save_arrays(out / f"{name}.npz", image=result.image, history=result.history)
    elif cmd in ("fgsm", "attack"):
        eps = args.epsilon / float(np.mean(std))  # pixel units -> normalized units
        if cmd == "fgsm":
            result = zi.fgsm(model, images, labels if labels is not None else predicted, eps, bounds=bounds)
        else:
            goal = check_target(model, args.target_class, len(images))
            result = zi.iterative_attack(model, images, goal, eps, steps=args.steps, bounds=bounds)
        for i, name in enumerate(names):
            trio = torch.cat([denormalize(images[i : i + 1], mean, std), denormalize(result.adversarial[i : i + 1],
                              mean, std)])
            pert = result.perturbation[i : i + 1] * float(np.mean(std))
            grid = torch.cat([trio, (pert / (2 * max(args.epsilon, 1e-8)) + 0.5).clamp(0, 1)])
            save(plot_grid(grid, [f"pred {int(result.pred_before[i])}", f"adversarial: {int(result.pred_after[i])}",
                                  f"r (Linf {float(pert.abs().max()):.3f})"], scale_each=False, size=2.2),
                 out / f"{name}.png")
        print(f"success rate {result.success_rate:.3f}; mean Linf {float(result.linf.mean()) * np.mean(std):.4f}, "
              f"mean L2 {float(result.l2.mean()) * np.mean(std):.4f} (pixel units)")
        save_arrays(out / "attack.npz", adversarial=result.adversarial, perturbation=result.perturbation,
                    pred_before=result.pred_before, pred_after=result.pred_after, success=result.success)
    elif cmd == "universal":
        train_pixels, _ = mnist_test(args.data_dir)  # fit on test digits outside the held-out ones
        held = set(args.mnist_test or [])
        pool = [i for i in range(args.fit_on + len(held)) if i not in held][: args.fit_on]
        fit_images = (train_pixels[pool] - mean[0]) / std[0]
        result = zi.universal_perturbation(model, fit_images, args.target_class, c=args.c, steps=args.steps,
                                           bounds=bounds)
        stats = zi.perturbation_success(model, images, result.perturbation, args.target_class, bounds=bounds)
        print(f"universal perturbation to class {args.target_class}: L2 {result.l2 * std[0]:.3f}, Linf "
              f"{result.linf * std[0]:.3f} (pixels); success on {len(images)} held-out image(s): "
              f"{stats['success_rate']:.3f} (already class {args.target_class}: {stats['base_rate']:.3f})")
        save(plot_grid(result.perturbation, [f"r -> class {args.target_class}"], size=2.5), out / "perturbation.png")
        save_arrays(out / "universal.npz", perturbation=result.perturbation, history=result.history, **stats)
    elif cmd in ("texture", "style-transfer"):
        if cmd == "texture":
            style, content = images[:1], None
        else:
            style = load_style(args, channels, mean, std)
            content = images[:1]
        result = zi.style_transfer(model, content, style, args.content_layers if content is not None else (),
                                   args.style_layers, content_weight=args.content_weight,
                                   style_weight=args.style_weight, steps=args.steps, bounds=bounds,
                                   init="content" if content is not None else "noise")
        shown = [style] if content is None else [content, style]
        grid = denormalize(torch.cat([*shown, result.image]), mean, std)
        save(plot_grid(grid, (["style"] if content is None else ["content", "style"]) + ["result"], scale_each=False,
                       size=2.5), out / f"{names[0]}.png")
        print(f"Gram loss {result.style_loss[0]:.4g} -> {result.style_loss[-1]:.4g}")
        save_arrays(out / f"{names[0]}.npz", image=result.image, style_loss=result.style_loss,
                    content_loss=result.content_loss)


def load_style(args: argparse.Namespace, channels: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    if args.style_mnist is not None:
        pixels, _ = mnist_test(args.data_dir, [args.style_mnist])
    elif args.style:
        pixels = read_image(Path(args.style), channels, args.convert)[None]
    else:
        raise SystemExit("error: style-transfer needs --style FILE or --style-mnist INDEX")
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (pixels - m) / s


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m zoo.interpret", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ckpt", required=True, help="ImageClassifier checkpoint (.ckpt)")
    common.add_argument("--images", nargs="+", metavar="PATH", help="image files (PNG/JPG) or folders of them")
    common.add_argument("--mnist-test", nargs="+", type=int, metavar="INDEX", help="official MNIST test digits")
    common.add_argument("--data-dir", default=None, help="folder holding mnist/ (default: $ZOO_DATA_DIR, ./data)")
    common.add_argument("--out", default="figures", help="output folder (default: figures/)")
    common.add_argument("--normalization", choices=["auto", *PRESETS], default="auto",
                        help="input normalization preset (auto: mnist for 1 channel, imagenet for 3)")
    common.add_argument("--mean", nargs="+", type=float, help="per-channel mean, overrides the preset")
    common.add_argument("--std", nargs="+", type=float, help="per-channel std, overrides the preset")
    common.add_argument("--convert", action="store_true", help="convert images to the model's channel count")
    common.add_argument("--resize", nargs=2, type=int, metavar=("H", "W"), help="resize the images")
    common.add_argument("--target", type=int, nargs="+", help="class(es) to explain (default: the prediction)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="method")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    p = add("layers", "layer table: name, type, activation shape, learnables (as 'analyze network')")
    p.add_argument("--input-size", nargs=2, type=int, default=[28, 28], metavar=("H", "W"))
    add("filters", "first-layer filters as images")
    p = add("activations", "activation maps of layers for each image (any size: stops after the last layer)")
    p.add_argument("--layer", nargs="+", required=True, help="layer name(s), e.g. features.2")
    p.add_argument("--max-channels", type=int, default=32)
    p = add("top-patches", "images and receptive-field patches that activate one channel most (Zeiler & Fergus)")
    p.add_argument("--layer", required=True)
    p.add_argument("--channel", type=int, required=True)
    p.add_argument("--k", type=int, default=9)
    add("saliency", "vanilla gradient saliency (Simonyan et al. 2014)")
    p = add("smoothgrad", "SmoothGrad (Smilkov et al. 2017)")
    p.add_argument("--samples", type=int, default=25)
    p.add_argument("--noise-level", type=float, default=0.15)
    add("guided-backprop", "guided backpropagation (Springenberg et al. 2015)")
    p = add("occlusion", "occlusion sensitivity (Zeiler & Fergus 2014)")
    p.add_argument("--patch", type=int, default=7)
    p.add_argument("--stride", type=int, default=2)
    p = add("cam", "class activation map (Zhou et al. 2016; needs a linear head)")
    p.add_argument("--layer", default=None)
    p = add("grad-cam", "Grad-CAM (Selvaraju et al. 2017)")
    p.add_argument("--layer", default=None, help="default: the last convolutional feature map")
    p.add_argument("--no-relu", action="store_true", help="keep negative evidence")
    p = add("class-model", "class-model visualization (Simonyan et al. 2014) with L2, jitter, blur")
    p.add_argument("--target-class", type=int, required=True)
    p.add_argument("--input-size", nargs=2, type=int, default=[28, 28], metavar=("H", "W"))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--l2", type=float, default=1e-2)
    p.add_argument("--jitter", type=int, default=1)
    p.add_argument("--blur-sigma", type=float, default=0.5)
    p.add_argument("--init", choices=["zeros", "noise"], default="zeros")
    p = add("deepdream", "DeepDream: amplify a layer's activations over octaves (Mordvintsev et al. 2015)")
    p.add_argument("--layer", required=True)
    p.add_argument("--channel", type=int, default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--octaves", type=int, default=3)
    p.add_argument("--octave-scale", type=float, default=1.4)
    p = add("invert", "feature inversion from noise (Mahendran & Vedaldi 2015)")
    p.add_argument("--layer", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--tv-weight", type=float, default=1e-3)
    p = add("fgsm", "fast gradient sign attack (Goodfellow et al. 2015)")
    p.add_argument("--epsilon", type=float, default=0.1, help="in pixel units (0-1)")
    p = add("attack", "targeted iterative attack (Kurakin et al. 2017)")
    p.add_argument("--target-class", type=int, required=True)
    p.add_argument("--epsilon", type=float, default=0.2, help="L-infinity bound in pixel units (0-1)")
    p.add_argument("--steps", type=int, default=20)
    p = add("universal", "universal perturbation to one class, min c|r| + L(x + r, k); MNIST only")
    p.add_argument("--target-class", type=int, required=True)
    p.add_argument("--fit-on", type=int, default=1000, help="MNIST test digits (not the held-out ones) to fit r on")
    p.add_argument("--c", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=300)
    for name, help in (("texture", "texture synthesis from the first image (Gatys et al. 2015)"),
                       ("style-transfer", "style transfer: content = the image, style = --style (Gatys et al. 2016)")):
        p = add(name, help)
        p.add_argument("--style-layers", nargs="+", required=True)
        p.add_argument("--content-layers", nargs="+", default=[])
        p.add_argument("--content-weight", type=float, default=1.0)
        p.add_argument("--style-weight", type=float, default=1e3)
        p.add_argument("--steps", type=int, default=300)
        if name == "style-transfer":
            p.add_argument("--style", help="style image file")
            p.add_argument("--style-mnist", type=int, help="style image: an MNIST test index")
    p = add("neighbours", "k nearest neighbours in feature space and a t-SNE plot (MNIST test set)")
    p.add_argument("--layer", default=None, help="default: the input of the last linear layer")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--gallery", type=int, default=2000, help="MNIST test digits to search and plot")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    from zoo.interpret.layers import UnknownLayerError

    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (UnknownLayerError, ValueError, FileNotFoundError) as err:  # bad input: the message, no traceback
        raise SystemExit(f"error: {err}") from err


if __name__ == "__main__":
    main(sys.argv[1:])
