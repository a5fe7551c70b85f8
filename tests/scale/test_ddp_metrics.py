"""Validation and test metrics on 2 DDP processes (CPU, gloo) equal the single-process values, per family.

``ddp_worker.py`` runs in a subprocess (once on 1 process, once on 2) with a timeout, so that a hang
(a collective that one rank never reaches) fails the test instead of blocking the suite. The
evaluation sets have an odd size: a padding ``DistributedSampler`` would evaluate one sample twice.

Generation (a VAE): the ELBO terms are means over images (not means of per-process means), the
reparameterisation noise is fixed per image, and FID / the 1-NN test score the same real images and the
same generated images (fixed noise, generated in shares and gathered) on any number of processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import _require

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
FAMILIES = ["classification", "segmentation", "detection", "generation"]
DATA = {"classification": "mnist", "segmentation": "isbi2012_em_membrane", "detection": "coco_val2017_subset",
        "generation": "mnist"}
TIMEOUT = 300  # seconds per launch
# Float sums over samples are added in another order on 2 processes: equal up to float32 rounding. The bias
# this guards against (a repeated sample, an integer count halved) is ~1e-3 on these sets.
RTOL, ATOL = 2e-5, 1e-6


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Folders of the 1-process results (one launch for every family) and of the 2-process results (one launch
    per family: a failure or a hang in one family does not take the others down)."""
    data_root = None
    for family in FAMILIES:
        data_root = _require(DATA[family])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = {1: tmp_path_factory.mktemp("ddp1"), 2: tmp_path_factory.mktemp("ddp2")}
    for devices, families in ((1, FAMILIES), *((2, [family]) for family in FAMILIES)):
        command = [sys.executable, str(WORKER), "--out", str(out[devices]), "--devices", str(devices),
                   "--data-dir", str(data_root), "--hang-timeout", str(TIMEOUT), "--families", *families]
        try:
            # the worker prints every thread's stack and exits at --hang-timeout; the timeout here is a backstop
            done = subprocess.run(command, cwd=out[devices], env=env, capture_output=True, text=True,
                                  timeout=TIMEOUT + 60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{devices}-process evaluation of {families} did not finish in {TIMEOUT + 60} s")
        if done.returncode:
            for family in families:  # shown by the family's tests
                (out[devices] / f"{family}_launch.error").write_text(done.stderr[-6000:])
    return out


def read(folder: Path, family: str, rank: int) -> dict:
    path = folder / f"{family}_rank{rank}.json"
    if not path.is_file():
        errors = sorted(folder.glob(f"{family}_rank*.error")) + sorted(folder.glob(f"{family}_launch.error"))
        detail = errors[0].read_text()[-3000:] if errors else "no result and no error file (an earlier family failed?)"
        pytest.fail(f"{family}: rank {rank} wrote no metrics:\n{detail}")
    return json.loads(path.read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_validation_and_test_metrics_on_two_processes_equal_one_process(
    results: dict[int, Path], family: str
) -> None:
    single = read(results[1], family, 0)
    ranks = [read(results[2], family, r) for r in (0, 1)]
    assert single["world_size"] == 1 and all(r["world_size"] == 2 for r in ranks)
    for stage in ("validate", "test"):
        expected = single[stage]
        assert expected, f"{family} {stage}: no metrics logged"
        for rank, result in enumerate(ranks):
            got = result[stage]
            assert got.keys() == expected.keys(), f"{family} {stage} rank {rank}"
            for key, value in expected.items():
                assert got[key] == pytest.approx(value, rel=RTOL, abs=ATOL), (
                    f"{family} {stage} {key}: {got[key]} on rank {rank} of 2, {value} on 1 process"
                )


@pytest.mark.parametrize("family", FAMILIES)
def test_two_processes_evaluate_every_sample_exactly_once(results: dict[int, Path], family: str) -> None:
    single = read(results[1], family, 0)
    ranks = [read(results[2], family, r) for r in (0, 1)]
    for stage in ("validate", "test"):
        everything = Counter(map(str, single["seen"][stage]))
        assert len(everything) % 2 == 1, "an odd number of samples: a padding sampler would repeat one"
        assert max(everything.values()) == 1
        per_rank = [Counter(map(str, r["seen"][stage])) for r in ranks]
        assert all(per_rank), f"{family} {stage}: a rank evaluated nothing"
        assert per_rank[0] + per_rank[1] == everything, f"{family} {stage}: samples missing or repeated under DDP"
