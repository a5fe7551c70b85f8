"""``python -m zoo.weights``: list, download, verify and locate pretrained weights (what a cluster user runs on a
login node before copying the cache to offline compute nodes).

    python -m zoo.weights list resnet50                       # the names a network accepts, with their metadata
    python -m zoo.weights download torchvision:IMAGENET1K_V2 --network resnet50
    python -m zoo.weights verify                              # every cached file against its hash
    python -m zoo.weights path timm:a1_in1k --network seresnet50

Names, cache, offline use and the mirror: :mod:`zoo.core.weight_sources`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from zoo.core.errors import ZooUserError
from zoo.core.weight_sources import (
    Library,
    WeightsHashError,
    WeightsSource,
    cache_dir,
    check_hash,
    expected_hash,
    hub_cache_dir,
    parse_weights,
    resolve_weights,
    weight_names,
)

LIBRARIES: tuple[Library, ...] = ("torchvision", "timm", "smp")


def libraries_of(network: str) -> list[tuple[Library, str]]:
    """The libraries whose names ``network`` takes, with what the network is there: a registered zoo network built
    from torchvision or timm, and an smp encoder of that name (both may apply: ``resnet34``)."""
    import zoo

    zoo.load_families()
    from segmentation_models_pytorch.encoders import encoders

    from zoo.core.registry import get_model_entry, list_models

    found: list[tuple[Library, str]] = []
    if network in list_models():
        source = get_model_entry(network).source
        if source in ("torchvision", "timm"):
            found.append((source, f"{get_model_entry(network).family} network"))  # type: ignore[arg-type]
    if network in encoders:
        found.append(("smp", "smp encoder (encoder_weights)"))
    return found


def _library_for(network: str | None) -> Library | None:
    if not network:
        return None
    libraries = libraries_of(network)
    return libraries[0][0] if libraries else None


def _metric(source: WeightsSource) -> str:
    metrics = source.info.get("metrics") or {}
    parts = []
    for dataset, values in metrics.items():
        shown = ", ".join(f"{k} {v}" for k, v in values.items() if not isinstance(v, dict))
        parts.append(f"{dataset}: {shown}")
    return "; ".join(parts)


def _cached(source: WeightsSource) -> str:
    if source.path is not None:
        return "yes" if source.path.is_file() else "no"
    if source.hub is not None:
        repo = source.hub[0]
        folder = hub_cache_dir() / f"models--{repo.replace('/', '--')}" / "snapshots"
        return "yes" if folder.is_dir() and any(folder.rglob(source.hub[2][0])) else "no"
    return "?"


def command_list(network: str) -> int:
    libraries = libraries_of(network)
    if not libraries:
        print(
            f"{network}: no library names (it is neither a zoo network built from torchvision or timm nor an smp "
            "encoder). Its weights are given as a local file or a URL.",
            file=sys.stderr,
        )
        return 1
    for library, what in libraries:
        names = weight_names(network, library)
        print(f"{network}, {what}: {len(names)} {library} names")
        for source in names:
            short = source.name.split(".", 1)[1] if library != "smp" and source.name else source.spec
            print(f"  {library}:{short}" if library != "smp" else f"  {short}   (or smp:{short})")
            print(f"      full name: {source.name}")
            print(f"      url:       {source.url}")
            print(f"      sha256:    {source.sha256 or ('recorded by the hub' if source.hub else 'none stated')}")
            details = []
            if source.info.get("num_params"):
                details.append(f"{source.info['num_params'] / 1e6:.1f} M parameters")
            if source.info.get("file_size"):
                details.append(f"{source.info['file_size']:.1f} MB")
            if _metric(source):
                details.append(_metric(source))
            if source.categories:
                details.append(f"{len(source.categories)} categories")
            if source.preprocessing:
                p = source.preprocessing
                details.append(f"eval resize {p.resize} crop {p.crop} {p.interpolation}")
            if source.info.get("license"):
                details.append(f"license {source.info['license']}")
            if details:
                print(f"      {'; '.join(details)}")
            print(f"      cached:    {_cached(source)}")
    return 0


def command_download(spec: str, network: str | None) -> int:
    resolved = resolve_weights(spec, network=network, library=_library_for(network))
    print(f"{resolved.source.label}\n  file:   {resolved.path}\n  sha256: {resolved.sha256}")
    return 0


def command_path(spec: str, network: str | None) -> int:
    source = parse_weights(spec, network=network, library=_library_for(network))
    if source.path is not None:
        print(source.path)
        return 0
    assert source.hub is not None
    repo, revision, filenames = source.hub
    print(f"{hub_cache_dir() / ('models--' + repo.replace('/', '--'))}  (the hub's cache: {repo}"
          f"{'@' + revision if revision else ''}, {filenames[0]})")
    return 0


def cached_files() -> Iterator[Path]:
    """Weight files of the zoo's cache (not the ``.sha256`` records, not unfinished downloads)."""
    root = cache_dir()
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith(".sha256") and not path.name.startswith("."):
            yield path


def hub_blobs() -> Iterator[tuple[Path, str]]:
    """Hub cache blobs named by their sha256 (LFS files: weights), with that hash."""
    root = hub_cache_dir()
    if not root.is_dir():
        return
    for blob in sorted(root.glob("models--*/blobs/*")):
        if len(blob.name) == 64 and all(c in "0123456789abcdef" for c in blob.name):
            yield blob, blob.name


def command_verify() -> int:
    bad = unknown = good = 0
    checks: list[tuple[Path, str | None]] = [(p, expected_hash(p)) for p in cached_files()]
    checks += list(hub_blobs())
    print(f"verifying {len(checks)} files in {cache_dir()} and {hub_cache_dir()}")
    for path, expected in checks:
        if expected is None:
            unknown += 1
            print(f"  no hash known  {path}")
            continue
        try:
            check_hash(path, expected, what="cached file", fix="Fix: delete it; it is downloaded again when used.")
        except WeightsHashError as err:
            bad += 1
            print(f"  MISMATCH       {err}")
            continue
        good += 1
        print(f"  ok             {path}")
    print(f"{good} ok, {bad} damaged, {unknown} without a known hash")
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.weights", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="the names a network accepts, with their metadata")
    listing.add_argument("network", help="a zoo network (resnet50, seresnet50, fasterrcnn_resnet50_fpn) or smp encoder")
    for name, text in (("download", "download a name or URL into the cache (verified)"),
                       ("path", "where the cache keeps a name or URL (nothing is downloaded)")):
        command = sub.add_parser(name, help=text)
        command.add_argument("spec", help="torchvision:<member>, timm:<tag>, an smp name, a URL or a file")
        command.add_argument("--network", help="the network a short name is for (resnet50 for torchvision:DEFAULT)")
    sub.add_parser("verify", help="check every cached file against its hash")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return command_list(args.network)
        if args.command == "download":
            return command_download(args.spec, args.network)
        if args.command == "path":
            return command_path(args.spec, args.network)
        return command_verify()
    except (ZooUserError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
