"""``channels_last: true`` (ZooModule): the networks and their image inputs run in the NHWC memory format, the
training matches the contiguous run to rounding, and the checkpoint loads into a module without the setting."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from zoo.classification import ImageClassifier


def _classifier(channels_last: bool) -> ImageClassifier:
    pl.seed_everything(0, verbose=False)
    return ImageClassifier("convnet", network_kwargs={"width": 8}, channels_last=channels_last,
                           optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))  # fmt: skip


class InputFormat(pl.Callback):
    """Records the loss of each step and whether the first pooling saw a channels-last input."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.nhwc: list[bool] = []

    def on_fit_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        pool = pl_module.net.features[3]  # its input, the first convolution's 8 channels: the layouts differ
        pool.register_forward_pre_hook(
            lambda m, args: self.nhwc.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.losses.append(float(outputs["loss"]))


def _fit(model: ImageClassifier, loader: torch.utils.data.DataLoader, tmp_path) -> tuple[InputFormat, pl.Trainer]:  # noqa: ANN001
    recorder = InputFormat()
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1,
                         callbacks=[recorder], default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, loader)
    return recorder, trainer


def test_channels_last_trains_in_nhwc_as_the_contiguous_run_and_its_checkpoint_loads_without_it(data_root, tmp_path):
    from datamodules import MNISTDataModule

    data = MNISTDataModule(data_dir=str(data_root), augment=False)
    data.setup("fit")
    dataset = torch.utils.data.TensorDataset(data.train_set.images[:96], data.train_set.labels[:96])
    loader = torch.utils.data.DataLoader(dataset, batch_size=32)

    nhwc_model = _classifier(channels_last=True)
    nhwc, trainer = _fit(nhwc_model, loader, tmp_path)
    plain, _ = _fit(_classifier(channels_last=False), loader, tmp_path)
    assert nhwc.nhwc and all(nhwc.nhwc) and not any(plain.nhwc)
    assert nhwc_model.net.features[4].weight.is_contiguous(memory_format=torch.channels_last)  # the 8 -> 16 conv
    # The first loss is computed before any update: the two layouts' kernels agree to rounding. The later ones follow
    # updates at lr 0.1 from gradients summed in another order (measured up to 4e-4 relative at the third step).
    assert nhwc.losses[0] == pytest.approx(plain.losses[0], rel=1e-5)
    torch.testing.assert_close(torch.tensor(nhwc.losses), torch.tensor(plain.losses), rtol=2e-3, atol=0)

    trainer.save_checkpoint(tmp_path / "nhwc.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "nhwc.ckpt", channels_last=False)
    images = data.train_set.images[:8]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), nhwc_model.eval()(images), rtol=1e-4, atol=1e-5)


def test_channels_last_on_a_module_without_a_network_stops_with_the_reason_instead_of_doing_nothing():
    from zoo.core.errors import ZooUserError

    model = _classifier(channels_last=True)
    del model.net
    with pytest.raises(ZooUserError, match="names no network to convert"):
        model.use_channels_last()
