"""``python -m zoo.interpret``: a subcommand per method, figures + arrays written, clear errors;
the training callback logs attribution grids."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from zoo.callbacks.interpret import InterpretationCallback
from zoo.classification import ImageClassifier
from zoo.interpret.__main__ import build_parser, main

SUBCOMMANDS = ["layers", "filters", "activations", "top-patches", "saliency", "smoothgrad", "guided-backprop",
               "occlusion", "cam", "grad-cam", "class-model", "deepdream", "invert", "fgsm", "attack", "universal",
               "texture", "style-transfer", "neighbours"]


def test_every_method_is_a_subcommand_with_help(capsys):
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert "--ckpt" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["grad-cam", "occlusion", "guided-backprop"])
def test_attribution_subcommand_writes_a_figure_per_image_and_the_arrays(method, trained_ckpt, data_root, tmp_path):
    main([method, "--ckpt", str(trained_ckpt), "--mnist-test", "0", "1", "--data-dir", str(data_root),
          "--out", str(tmp_path)])
    folder = tmp_path / method
    assert (folder / "mnist_test_0.png").is_file() and (folder / "mnist_test_1.png").is_file()
    arrays = np.load(folder / "maps.npz")
    assert arrays["maps"].shape[0] == 2 and arrays["maps"].shape[-2:] == (28, 28)


def test_image_files_are_read_and_normalized(trained_ckpt, tmp_path):
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "black.png")
    main(["saliency", "--ckpt", str(trained_ckpt), "--images", str(tmp_path), "--out", str(tmp_path / "f")])
    images = np.load(tmp_path / "f" / "saliency" / "maps.npz")["images"]
    assert np.allclose(images, -0.1307 / 0.3081, atol=1e-5)  # black in MNIST's normalization


def test_rgb_image_for_a_grayscale_model_is_a_clear_error(trained_ckpt, tmp_path):
    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(SystemExit, match="3 channel.*expects 1.*--convert"):
        main(["saliency", "--ckpt", str(trained_ckpt), "--images", str(tmp_path / "rgb.png"), "--out", str(tmp_path)])


def test_unknown_layer_on_the_command_line_lists_the_layers(trained_ckpt, data_root, tmp_path):
    with pytest.raises(SystemExit, match="Unknown layer 'conv9'.*Available layers: features, features.0"):
        main(["activations", "--ckpt", str(trained_ckpt), "--mnist-test", "0", "--data-dir", str(data_root),
              "--layer", "conv9", "--out", str(tmp_path)])


def test_target_out_of_range_on_the_command_line_is_a_clear_error(trained_ckpt, data_root, tmp_path):
    with pytest.raises(SystemExit, match="target class 12 is out of range"):
        main(["grad-cam", "--ckpt", str(trained_ckpt), "--mnist-test", "0", "--data-dir", str(data_root),
              "--target", "12", "--out", str(tmp_path)])


def test_callback_logs_a_grid_per_method_for_fixed_validation_images(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)))
    callback = InterpretationCallback(methods=("grad_cam", "saliency"), num_images=4, every_n_epochs=2)
    model = ImageClassifier(network="convnet", network_kwargs={"width": 4})
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback], default_root_dir=tmp_path,
                         accelerator="cpu", devices=1)
    trainer.fit(model, DataLoader(data, batch_size=16), DataLoader(data, batch_size=16))
    names = sorted(p.name for p in callback.saved)
    assert names == ["grad_cam_epoch001.png", "saliency_epoch001.png"]  # epoch 0 skipped: every 2 epochs
    assert all(p.is_file() for p in callback.saved)
    assert callback.images.shape == (4, 1, 28, 28)
    assert model.training  # the callback left the model as it found it


def test_callback_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="unknown method.*gradcam"):
        InterpretationCallback(methods=("gradcam",))
