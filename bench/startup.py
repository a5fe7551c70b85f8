"""Start-up: how long the command line takes before it does any work.

Measures, each as a fresh process (the way a user meets them): ``python train.py --help``, ``python train.py fit
--help``, and a ``fit`` of the MNIST config up to its first training step, split into interpreter + imports,
parsing and building the model, data and trainer, and Lightning's setup until the first batch starts, then the
first step itself. With ``--baseline DIR`` (another checkout of the zoo, e.g. ``git worktree add /tmp/base
<commit>``) both are measured in the same run, interleaved (baseline, this, baseline, this, ...), so that machine
noise hits both alike; the table gives medians and this / baseline.

    python bench/startup.py --repeats 5 [--baseline /tmp/base]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, data_dir, markdown_table, write_json  # noqa: E402

# Runs in the measured checkout: the phases of a fit up to the end of its first training step.
FIRST_STEP = r'''
import json, sys, time
start = time.time()
sys.path.insert(0, sys.argv[1])
from zoo.cli import main
import pytorch_lightning as pl
imported = time.time()
marks = {}
class Probe(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        marks.setdefault("first_batch", time.time())
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        marks.setdefault("first_step", time.time())
cli = main(sys.argv[2:], run=False)
built = time.time()
cli.trainer.callbacks.append(Probe())
cli.trainer.fit(cli.model, datamodule=cli.datamodule)
print("PHASES " + json.dumps({"start": start, "imported": imported, "built": built, **marks}))
'''


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    began = time.time()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed in {cwd}:\n{done.stderr[-3000:]}")
    return time.time() - began, done.stdout


def first_step(repo: Path, env: dict[str, str], data: str) -> dict[str, float]:
    config = str(repo / "configs/classification/mnist.yaml")
    with tempfile.TemporaryDirectory() as work:
        args = ["--config", config, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
                f"--trainer.logger.init_args.save_dir={work}",
                f"--trainer.default_root_dir={work}", "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false", f"--data.init_args.data_dir={data}"]  # fmt: skip
        began = time.time()
        _, out = timed([sys.executable, "-c", FIRST_STEP, str(repo), *args], Path(work), env)
    phases = json.loads(out.split("PHASES ", 1)[1].splitlines()[0])
    return {
        "interpreter_s": phases["start"] - began,
        "imports_s": phases["imported"] - phases["start"],
        "build_s": phases["built"] - phases["imported"],
        "setup_to_first_batch_s": phases["first_batch"] - phases["built"],
        "first_step_s": phases["first_step"] - phases["first_batch"],
        "to_first_step_s": phases["first_step"] - began,
    }


def measure(repo: Path, data: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    result = {
        "help_s": timed([sys.executable, str(repo / "train.py"), "--help"], repo, env)[0],
        "fit_help_s": timed([sys.executable, str(repo / "train.py"), "fit", "--help"], repo, env)[0],
    }
    return {**result, **first_step(repo, env, data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout of the zoo to measure beside this one")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output", default=None, help="JSON file (default bench/results/startup.json)")
    args = parser.parse_args()
    data = data_dir(args.data_dir)
    repos = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in repos}
    for _ in range(args.repeats):
        for name in reversed(list(repos)):  # baseline first
            runs[name].append(measure(repos[name], data))
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    rows = []
    for key in medians["this"]:
        row = [key.removesuffix("_s"), f"{medians['this'][key]:.2f}"]
        if "baseline" in medians:
            before = medians["baseline"][key]
            row = [row[0], f"{before:.2f}", row[1], f"{medians['this'][key] / before:.2f}"]
        rows.append(row)
    header = ["seconds (median)", "baseline", "this", "this / baseline"] if "baseline" in medians else ["seconds",
                                                                                                        "this"]
    print(markdown_table(header, rows))
    path = write_json("startup", {"repeats": args.repeats, "baseline": str(args.baseline or ""), "medians": medians,
                                  "runs": runs}, args.output)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
