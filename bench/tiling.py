"""Overlap-tile inference: throughput against one whole-image pass, and memory that does not grow
with the image.

1. Throughput on a ``--size`` x ``--size`` image (2048 by default) for the paper's valid-convolution
   U-Net: pixels/s of :func:`zoo.segmentation.predict_tiled` at several tile sizes relative to one
   forward pass over the whole mirror-padded image (:func:`predict_whole`), and the largest
   difference between the two (they should agree to float rounding). Target: >= 0.8x.
2. The same for a padded network (smp U-Net, ResNet-18 encoder, random weights unless
   ``--smp-weights``), tiled with overlap and blending: throughput and the difference from the
   whole-image pass (mean |logit difference|, fraction of pixels whose class changes).
3. Peak memory of tiled inference for images of ``--memory-sizes`` (up to 4096 x 4096), each in a
   fresh process: the peak resident memory above what the process held before the call, split into
   the image-sized buffers (mirror-padded input copy, output logits) and the rest, the network's
   working memory, which must stay bounded by the tile size.

    python bench/tiling.py                                  # the full run (paper widths, 2048 / 4096)
    python bench/tiling.py --size 512 --memory-sizes 256 512 --base-channels 8   # a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json  # noqa: E402

from zoo.core.weights import load_weights  # noqa: E402
from zoo.segmentation import UNet, build_smp, predict_tiled, predict_whole  # noqa: E402
from zoo.segmentation.tiling import network_geometry, plan_axis  # noqa: E402


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def throughput(
    net: torch.nn.Module, size: int, tiles: list[int], overlap: int, batch: int, repeats: int, name: str
) -> list[dict]:
    torch.manual_seed(0)
    image = torch.randn(1, net.in_channels if hasattr(net, "in_channels") else 1, size, size)
    whole_s, whole = _timed(lambda: predict_whole(net, image), repeats)
    rows = [
        {
            "network": name,
            "mode": "whole image",
            "tile": None,
            "tiles": 1,
            "seconds": whole_s,
            "mpix_per_s": size * size / whole_s / 1e6,
            "relative": 1.0,
            "max_abs_diff": 0.0,
            "mean_abs_diff": 0.0,
            "class_changed": 0.0,
        }
    ]
    geometry = network_geometry(net)
    for tile in tiles:
        plan = plan_axis(size, tile, geometry, overlap)
        seconds, tiled = _timed(lambda t=tile: predict_tiled(net, image, t, overlap, batch), repeats)
        diff = (tiled - whole).abs()
        rows.append(
            {
                "network": name,
                "mode": "tiled" if geometry.valid else f"tiled, overlap {overlap}, blended",
                "tile": plan.tile,
                "tiles": len(plan.starts) ** 2,
                "seconds": seconds,
                "mpix_per_s": size * size / seconds / 1e6,
                "relative": whole_s / seconds,
                "max_abs_diff": diff.max().item(),
                "mean_abs_diff": diff.mean().item(),
                "class_changed": (tiled.argmax(1) != whole.argmax(1)).float().mean().item(),
            }
        )
    return rows


def memory_probe(size: int, tile: int, base_channels: int, batch: int) -> dict:
    """Run in a fresh process: peak RSS of one tiled prediction over what the process held before."""
    torch.manual_seed(0)
    net = UNet(2, 1, base_channels=base_channels).eval()
    image = torch.randn(1, 1, size, size)
    with torch.no_grad():  # warm up the allocator and oneDNN on one tile
        predict_tiled(net, image[..., :64, :64], tile, 0, 1)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _rss_kib("VmRSS")
    out = predict_tiled(net, image, tile, 0, batch)
    peak = _rss_kib("VmHWM")
    geometry = network_geometry(net)
    plan = plan_axis(size, tile, geometry)
    buffers = (plan.padded**2 * 1 + out.numel()) * 4 / 2**20  # padded input copy + output logits, MiB
    increase = (peak - before) / 1024
    return {
        "size": size,
        "tile": plan.tile,
        "tiles": len(plan.starts) ** 2,
        "peak_increase_mib": increase,
        "image_buffers_mib": buffers,
        "working_mib": increase - buffers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="side of the throughput image")
    parser.add_argument(
        "--tiles",
        type=int,
        nargs="+",
        default=[572, 892, 1212],
        help="largest tile input sides to try (572: the paper's)",
    )
    parser.add_argument("--base-channels", type=int, default=64, help="U-Net width (64 in the paper)")
    parser.add_argument("--batch", type=int, default=1, help="tiles per forward pass")
    parser.add_argument("--repeats", type=int, default=1, help="timing repeats (best is kept)")
    parser.add_argument("--smp-tiles", type=int, nargs="*", default=[512, 1024])
    parser.add_argument("--overlap", type=int, default=64, help="overlap of padded-network tiles")
    parser.add_argument(
        "--smp-weights", default=None, help="local smp U-Net weights: a state dict or a zoo checkpoint (else random)"
    )
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[1024, 2048, 4096])
    parser.add_argument("--memory-tile", type=int, default=572)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/tiling.json)")
    parser.add_argument(
        "--parts", nargs="+", choices=["throughput", "memory"], default=["throughput", "memory"],
        help="which measurements to run (memory alone is insensitive to other jobs on the CPU)",
    )
    parser.add_argument("--memory-probe", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe is not None:
        print(json.dumps(memory_probe(args.memory_probe, args.memory_tile, args.base_channels, args.batch)))
        return

    rows: list[dict] = []
    if "throughput" in args.parts:
        torch.manual_seed(0)
        unet = UNet(2, 1, base_channels=args.base_channels).eval()
        name = f"unet (valid, {args.base_channels} ch)"
        rows = throughput(unet, args.size, args.tiles, 0, args.batch, args.repeats, name)
        smp_net = build_smp("unet", 2, 1, "resnet18").eval()
        if args.smp_weights:
            load_weights(smp_net, args.smp_weights)  # a state dict or zoo checkpoint of smp_unet, resnet18, 1 channel
        rows += throughput(
            smp_net,
            args.size,
            args.smp_tiles,
            args.overlap,
            args.batch,
            args.repeats,
            "smp_unet resnet18 (padded)" + ("" if args.smp_weights else ", random weights"),
        )
        headers = [
            "network",
            "mode",
            "tile",
            "tiles",
            "s",
            "Mpx/s",
            "x whole",
            "max |diff|",
            "mean |diff|",
            "class changed",
        ]
        table = markdown_table(
            headers,
            [
                [
                    r["network"],
                    r["mode"],
                    r["tile"],
                    r["tiles"],
                    r["seconds"],
                    r["mpix_per_s"],
                    r["relative"],
                    r["max_abs_diff"],
                    r["mean_abs_diff"],
                    r["class_changed"],
                ]
                for r in rows
            ],
        )
        print(f"## Overlap-tile throughput, {args.size}x{args.size} image\n\n{table}\n")

    memory = []
    for size in args.memory_sizes if "memory" in args.parts else []:
        cmd = [
            sys.executable,
            __file__,
            "--memory-probe",
            str(size),
            "--memory-tile",
            str(args.memory_tile),
            "--base-channels",
            str(args.base_channels),
            "--batch",
            str(args.batch),
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        memory.append(json.loads(result.stdout.strip().splitlines()[-1]))
    mem_table = markdown_table(
        ["image", "tile", "tiles", "peak increase MiB", "image-sized buffers MiB", "working MiB"],
        [
            [
                f"{m['size']}x{m['size']}",
                m["tile"],
                m["tiles"],
                m["peak_increase_mib"],
                m["image_buffers_mib"],
                m["working_mib"],
            ]
            for m in memory
        ],
    )
    print(f"## Peak memory of tiled inference (U-Net, {args.base_channels} ch, tile {args.memory_tile})\n\n{mem_table}")
    path = write_json("tiling", {"args": vars(args), "throughput": rows, "memory": memory}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
