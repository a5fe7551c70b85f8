"""The speed benchmarks of issue 21 measure what they say: ``bench/lightning_overhead.py`` interleaves one plain step
after every zoo step and divides their sums; ``bench/compile_speed.py``'s pay-off step is where the cumulative times
cross (measured in the run, else extrapolated, else never); ``bench/predict_throughput.py``'s hand-written predictor
computes what the zoo's ``predict_step`` does, one batch after each of the zoo's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench import compile_speed, lightning_overhead, predict_throughput


def test_payoff_step_is_the_first_step_where_the_compiled_run_has_caught_up() -> None:
    eager = [1.0, 1.0, 1.0, 1.0, 1.0]
    compiled = [2.5, 0.5, 0.5, 0.5, 0.5]  # 1.5 s behind after step 1, 0.5 s gained per step
    assert compile_speed.payoff_step(eager, compiled, 1.0, 0.5) == 4.0  # cumulative 4.0 <= 4.0


def test_payoff_step_is_extrapolated_with_the_steady_times_when_the_run_ends_first() -> None:
    eager, compiled = [1.0, 1.0], [11.0, 0.5]  # 9.5 s behind after 2 steps, 0.5 s gained per step
    assert compile_speed.payoff_step(eager, compiled, 1.0, 0.5) == pytest.approx(2 + 9.5 / 0.5)


def test_payoff_step_is_none_when_compiled_is_not_faster() -> None:
    assert compile_speed.payoff_step([1.0, 1.0], [5.0, 1.2], 1.0, 1.2) is None


def test_compile_bench_refuses_fewer_steps_than_twice_its_warm_up() -> None:
    with pytest.raises(SystemExit):
        compile_speed.main_bench(["--steps", "4", "--warm", "3", "--routes", "convnet"])


def test_overhead_bench_times_a_plain_step_after_every_zoo_step(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    result = lightning_overhead.main_bench(
        ["--runs", "1", "--steps", "12", "--warmup", "2", "--data-dir", str(data_root), "--out", str(out)]
    )
    (run,) = result["runs"]
    for key in ("zoo_ms", "plain_ms", "ratio"):
        assert math.isfinite(run[key]) and run[key] > 0, key
    assert run["ratio"] == pytest.approx(run["zoo_ms"] / run["plain_ms"])
    assert result["median_ratio"] == run["ratio"]
    assert json.loads(out.read_text())["design"] == "interleaved per step"


def test_interleaver_runs_the_plain_step_once_per_zoo_step() -> None:
    calls = []

    def plain() -> float:
        calls.append(1)
        return 0.001

    interleaver = lightning_overhead.Interleaver(plain)  # type: ignore[arg-type]
    interleaver.on_train_start(None, None)
    for index in range(3):
        interleaver.on_train_batch_end(None, None, None, None, index)
    assert len(calls) == 3 and interleaver.plain_times == [0.001] * 3 and len(interleaver.zoo_times) == 3


@pytest.mark.parametrize("family", ["classification", "detection", "generation"])
def test_the_hand_written_predictor_computes_what_the_zoo_predict_step_does(
    family: str, data_root: Path, tmp_path: Path
) -> None:
    cli = predict_throughput.build_cli(family, str(data_root), tmp_path, canvases=4)
    module, datamodule = cli.model.eval(), cli.datamodule
    module.setup("predict")  # the config's memory format, as the trainer would
    module.on_predict_epoch_start()
    datamodule.setup("predict")
    batch = next(iter(datamodule.predict_dataloader()))
    plain = predict_throughput.plain_predictor(family, module, tmp_path)
    torch.manual_seed(0)
    hand = plain(batch)
    torch.manual_seed(0)  # the generative models sample their noise: the same noise on both sides
    with torch.inference_mode():
        zoo = module.predict_step(batch, 0)
    if family == "classification":
        torch.testing.assert_close(hand, zoo["probabilities"])
    elif family == "generation":
        torch.testing.assert_close(hand, zoo["samples"])
    else:
        assert len(hand) == len(zoo) == len(batch["images"])
        for ours, theirs in zip(hand, zoo, strict=True):
            torch.testing.assert_close(ours["boxes"], theirs["boxes"])
            assert torch.equal(ours["labels"], theirs["labels"])
        assert len(list(tmp_path.glob("plain_*_boxes.png"))) == len(batch["images"])


def test_predict_bench_reports_both_throughputs_and_their_ratio(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "predict.json"
    result = predict_throughput.main_bench(
        ["--families", "classification", "--runs", "1", "--limit-batches", "3", "--warmup", "1",
         "--data-dir", str(data_root), "--out", str(out)]
    )  # fmt: skip
    (run,) = result["families"]["classification"]["runs"]
    assert run["batches"] == 3 and run["images"] > 0
    for key in ("zoo_images_per_s", "plain_images_per_s"):
        assert math.isfinite(run[key]) and run[key] > 0, key
    assert run["ratio"] == pytest.approx(run["zoo_images_per_s"] / run["plain_images_per_s"])
    assert json.loads(out.read_text())["compile"] is False
