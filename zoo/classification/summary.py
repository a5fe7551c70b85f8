"""A network's layer table: name, type, output shape and learnable parameters of every layer, and totals.

    python -m zoo.classification.summary resnet20 --input-size 1 1 28 28 --num-classes 10
    python -m zoo.classification.summary resnet18 --input-size 1 3 224 224 --depth 2

:func:`summarize` returns the table as data (:class:`Summary`: rows + totals; ``str()`` prints it).
torchinfo runs the forward pass (output shapes, multiply-adds); the parameter column is counted
here so that it always adds up to the model's parameter count: each row holds the parameters its
layer owns directly (``module.parameters(recurse=False)``; a shared parameter counted once), plus,
with ``depth``, those of the layers folded into it. Layers that the forward pass does not reach
(GoogLeNet's auxiliary heads in eval mode) are listed with no output shape, their parameters counted.
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torchinfo
import yaml

from zoo.core.registry import create_model, get_model_entry


@dataclass
class LayerRow:
    name: str  # qualified module name (``layer1.0.conv1``)
    type: str  # class name
    depth: int  # 1 for the network's direct children
    output_shape: list[Any] | None  # of the first call; None when the forward pass does not reach it
    params: int  # parameters owned by this layer (and by the layers folded into it)
    trainable: int  # of which requires_grad


@dataclass
class Summary:
    model: str
    input_size: tuple[int, ...]
    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    mult_adds: int = 0

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "non_trainable_params": self.non_trainable_params}

    def __str__(self) -> str:
        headers = ("Layer", "Type", "Output shape", "Params")
        body = [
            (
                "  " * (row.depth - 1) + row.name.rpartition(".")[2] if row.depth else row.name,
                row.type,
                "--" if row.output_shape is None else str(list(row.output_shape)),
                f"{row.params:,}" if row.params else "--",
            )
            for row in self.rows
        ]
        widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]

        def line(cells: Sequence[str]) -> str:
            pairs = enumerate(zip(cells, widths, strict=True))
            return "  ".join(c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in pairs).rstrip()

        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        lines = [f"{self.model}, input {list(self.input_size)}", rule, line(headers), rule]
        lines += [line(r) for r in body]
        lines += [
            rule,
            f"Total params: {self.total_params:,}",
            f"Trainable params: {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            f"Mult-adds (M): {self.mult_adds / 1e6:,.2f}",
        ]
        return "\n".join(lines)


def summarize(
    name_or_model: str | nn.Module,
    input_size: Sequence[int] = (1, 1, 28, 28),
    depth: int | None = None,
    **create_kwargs: Any,
) -> Summary:
    """The layer table of a registered network (built with ``create_kwargs``; ``in_channels``
    defaults to ``input_size[1]``) or of a given module, for one input of ``input_size``.

    ``depth`` keeps layers up to that nesting depth (1: the network's direct children), each
    counting the parameters of the layers folded into it; ``None`` lists every layer.
    """
    if isinstance(name_or_model, str):
        entry = get_model_entry(name_or_model, family="classification")
        if "in_channels" in inspect.signature(entry.builder).parameters:
            create_kwargs.setdefault("in_channels", int(input_size[1]))
        net = create_model(name_or_model, family="classification", **create_kwargs)
        label = name_or_model
    else:
        if create_kwargs:
            raise TypeError("create_kwargs only apply to a registered name, not to a given module")
        net, label = name_or_model, type(name_or_model).__name__
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be >= 1 or None, got {depth}")

    stats = torchinfo.summary(
        net, input_size=tuple(input_size), depth=10_000, verbose=0, mode="eval", device="cpu"
    )
    shapes: dict[int, list[Any]] = {}
    for info in stats.summary_list:
        if info.module is not None and id(info.module) not in shapes and info.executed:
            shapes[id(info.module)] = info.output_size

    rows: list[LayerRow] = []
    by_name: dict[str, LayerRow] = {}
    seen: set[int] = set()
    for name, module in net.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        count = sum(p.numel() for p in own)
        trainable = sum(p.numel() for p in own if p.requires_grad)
        if not name:  # the network itself: only a row if it holds parameters directly
            if count:
                rows.append(LayerRow("(own)", type(module).__name__, 0, None, count, trainable))
            continue
        level = name.count(".") + 1
        if depth is not None and level > depth:
            ancestor = by_name[".".join(name.split(".")[:depth])]
            ancestor.params += count
            ancestor.trainable += trainable
            continue
        row = LayerRow(name, type(module).__name__, level, shapes.get(id(module)), count, trainable)
        rows.append(row)
        by_name[name] = row

    total = sum(r.params for r in rows)
    expected = sum(p.numel() for p in net.parameters())
    assert total == expected, f"layer table counts {total:,} parameters, the model has {expected:,}"
    return Summary(
        model=label,
        input_size=tuple(int(v) for v in input_size),
        rows=rows,
        total_params=total,
        trainable_params=sum(r.trainable for r in rows),
        mult_adds=int(stats.total_mult_adds),
    )


def _parse_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> Summary:
    parser = argparse.ArgumentParser(
        prog="python -m zoo.classification.summary",
        description="Layer table of a registered classification network: layer, type, output shape, "
        "parameters, and totals.",
    )
    parser.add_argument("name", help="registered network name (zoo.list_models(family='classification'))")
    parser.add_argument("--input-size", nargs="+", type=int, default=[1, 1, 28, 28], metavar="N",
                        help="input shape N C H W (default: 1 1 28 28); in_channels follows C")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None, help="fold layers deeper than this")
    parser.add_argument("--arg", action="append", type=_parse_arg, default=[], metavar="KEY=VALUE",
                        help="another builder argument, e.g. --arg small_input=true (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    args = parser.parse_args(argv)
    kwargs = dict(args.arg)
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    with torch.no_grad():
        result = summarize(args.name, args.input_size, depth=args.depth, **kwargs)
    print(json.dumps(result.to_dict(), indent=1) if args.json else result)
    return result


if __name__ == "__main__":
    main()
