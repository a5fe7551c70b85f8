"""Every registered classifier: parameters, MACs and CPU throughput, plus the zoo-vs-torchvision ratio.

For each model of ``zoo.list_models(family="classification")`` (or ``--models`` patterns):

* parameters at 1000 classes, 3 channels (the published configuration);
* MACs per image (``torch.utils.flop_counter``: multiply-adds of convolutions and matmuls);
* training images/s (forward + backward + SGD step) and inference images/s at 32x32 (batch 128,
  10 classes, the CIFAR-style stem via ``small_input=True`` where the builder has it) and at
  224x224 (batch 16, 1000 classes, the ImageNet stem via ``small_input=False`` where the builder has
  it: DenseNet-BC-100 defaults to its CIFAR stem, whose full-resolution dense blocks need over 20 GB
  at 224x224; the CIFAR ResNets and LeNet-5 / NiN have only their own stem);
* for models built from torchvision: inference images/s of the zoo model against the plain
  ``torchvision.models.<name>`` at 224x224, interleaved, as a ratio (it must be within 3%).

Each timing runs one warm-up step, then steps until ``--min-seconds`` have passed (at least
``--min-steps``). Writes ``bench/results/classifier_table.json`` and ``classifier_table.md``.

    python bench/classifier_table.py                      # everything (about half an hour on 2 cores)
    python bench/classifier_table.py --models "resnet*" --sizes 32
    python bench/classifier_table.py --ratio-only --ratio-rounds 7     # only the torchvision ratios, again
"""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, markdown_table, write_json  # noqa: E402

from zoo import create_model, get_model_entry, list_models  # noqa: E402

SETTINGS = {32: {"batch": 128, "num_classes": 10}, 224: {"batch": 16, "num_classes": 1000}}


def build(name: str, size: int) -> torch.nn.Module:
    kwargs = {"num_classes": SETTINGS[size]["num_classes"], "in_channels": 3}
    if "small_input" in inspect.signature(get_model_entry(name).builder).parameters:
        kwargs["small_input"] = size < 64
    return create_model(name, **kwargs)


def logits_of(output: object) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]  # GoogLeNet's aux outputs in training


def timed(step, batch: int, min_seconds: float, min_steps: int) -> float:
    """Images per second of ``step()`` after one warm-up call."""
    step()
    done, start = 0, time.perf_counter()
    while done < min_steps or time.perf_counter() - start < min_seconds:
        step()
        done += 1
    return done * batch / (time.perf_counter() - start)


def train_throughput(model: torch.nn.Module, size: int, args: argparse.Namespace) -> float:
    batch, classes = SETTINGS[size]["batch"], SETTINGS[size]["num_classes"]
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(logits_of(model(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(step, batch, args.min_seconds, args.min_steps)


def infer_throughput(model: torch.nn.Module, size: int, args: argparse.Namespace, batch: int | None = None) -> float:
    batch = batch or SETTINGS[size]["batch"]
    x = torch.randn(batch, 3, size, size)
    model.eval()

    def step() -> None:
        with torch.inference_mode():
            model(x)

    return timed(step, batch, args.min_seconds, args.min_steps)


def macs(model: torch.nn.Module, size: int) -> float:
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 2


def torchvision_ratio(name: str, args: argparse.Namespace) -> float:
    """Median over ``--ratio-rounds`` of (zoo images/s) / (torchvision images/s), each round timing the two
    back to back, in alternating order: a ratio of neighbouring timings cancels most of a shared machine's drift."""
    import torchvision

    zoo_model = build(name, 224)
    tv_model = getattr(torchvision.models, name)(weights=None, num_classes=1000)
    ratios = []
    for round_ in range(args.ratio_rounds):  # alternate which goes first: no side gets the warmer machine
        if round_ % 2:
            tv_rate, zoo_rate = infer_throughput(tv_model, 224, args), infer_throughput(zoo_model, 224, args)
        else:
            zoo_rate, tv_rate = infer_throughput(zoo_model, 224, args), infer_throughput(tv_model, 224, args)
        ratios.append(zoo_rate / tv_rate)
    return statistics.median(ratios)


def has_torchvision_twin(name: str) -> bool:
    import torchvision

    return get_model_entry(name).source == "torchvision" and hasattr(torchvision.models, name)  # not densenet_bc100


def write_outputs(results: list[dict], args: argparse.Namespace) -> tuple[str, str, Path, Path]:
    """Table and JSON of the rows so far: rewritten after every model, so a crash loses nothing measured."""
    headers = ["model", "source", "params (M)"]
    for size in args.sizes:
        headers += [f"GMACs {size}", f"train img/s {size}", f"infer img/s {size}"]
    headers.append("zoo / torchvision")
    rows = []
    for r in results:
        row = [r["model"], r["source"], r["params"] / 1e6]
        for size in args.sizes:
            row += [r.get(f"macs_{size}", 0) / 1e9 if f"macs_{size}" in r else None,
                    r.get(f"train_ips_{size}"), r.get(f"infer_ips_{size}")]
        row.append(r.get("zoo_vs_torchvision"))
        rows.append(row)
    info = machine()
    table = markdown_table(headers, rows)
    title = (f"Classifier table: {info['date']}, {info['cpu']}, {info['torch_threads']} threads, "
             f"torch {info['torch']}. 32x32: batch 128, 10 classes, CIFAR stem; 224x224: batch 16, 1000 classes, "
             "ImageNet stem.")
    path = write_json("classifier_table", {"settings": SETTINGS, "results": results}, args.out)
    md = (Path(args.out).with_suffix(".md") if args.out else RESULTS / "classifier_table.md")
    md.write_text(f"{title}\n\n{table}\n")
    return title, table, path, md


def remeasure_ratios(args: argparse.Namespace) -> None:
    """``--ratio-only``: the zoo-vs-torchvision ratio again for the matching rows of an earlier run's JSON."""
    path = Path(args.out) if args.out else RESULTS / "classifier_table.json"
    results = json.loads(path.read_text())["results"]
    for row in results:
        if has_torchvision_twin(row["model"]) and any(fnmatch.fnmatch(row["model"], p) for p in args.models):
            row["zoo_vs_torchvision"] = torchvision_ratio(row["model"], args)
            print(row["model"], round(row["zoo_vs_torchvision"], 4), flush=True)
            title, table, path, md = write_outputs(results, args)
    title, table, path, md = write_outputs(results, args)
    print("\n" + title + "\n\n" + table + f"\n\nwrote {path} and {md}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["*"], help="name patterns (shell wildcards)")
    parser.add_argument("--sizes", nargs="*", type=int, default=[32, 224], choices=[32, 224])
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--min-steps", type=int, default=2)
    parser.add_argument("--ratio-rounds", type=int, default=3)
    parser.add_argument("--no-ratio", action="store_true", help="skip the torchvision comparison")
    parser.add_argument(
        "--ratio-only", action="store_true", help="re-measure only the torchvision ratios of the rows in the JSON"
    )
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.ratio_only:
        remeasure_ratios(args)
        return

    names = [n for n in list_models(family="classification") if any(fnmatch.fnmatch(n, p) for p in args.models)]
    results = []
    for name in names:
        entry = get_model_entry(name)
        row: dict = {"model": name, "source": entry.source}
        row["params"] = sum(p.numel() for p in build(name, 224).parameters())
        for size in args.sizes:
            try:
                row[f"macs_{size}"] = macs(build(name, size), size)
                row[f"train_ips_{size}"] = train_throughput(build(name, size), size, args)
                row[f"infer_ips_{size}"] = infer_throughput(build(name, size), size, args)
            except ValueError as err:  # a network that refuses an input size says why
                row[f"error_{size}"] = str(err).splitlines()[0]
        if has_torchvision_twin(name) and not args.no_ratio and 224 in args.sizes:
            row["zoo_vs_torchvision"] = torchvision_ratio(name, args)
        results.append(row)
        print(name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "model"},
              flush=True)
        title, table, path, md = write_outputs(results, args)
    print("\n" + title + "\n\n" + table)
    print(f"\nwrote {path} and {md}")


if __name__ == "__main__":
    main()
