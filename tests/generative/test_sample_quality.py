"""FID and the 1-NN test at validation end and from a checkpoint; the feature classifier files."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.classification import ImageClassifier
from zoo.generative import VAE, ClassifierFeatures, InceptionFeatures

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_validation_end_logs_fid_and_one_nn_accuracy_then_a_checkpoint_reproduces_them(
    tiny_images, make_trainer, tmp_path
):
    torch.manual_seed(0)
    extractor = ClassifierFeatures(ImageClassifier(network="lenet5"))
    model = VAE(latent_dim=4, metric_samples=100)
    model.set_feature_extractor(extractor)
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, default_root_dir=str(tmp_path))
    trainer.fit(model, tiny_images(n=128, batch_size=64))
    metrics = trainer.callback_metrics
    assert {"val/fid", "val/nn_accuracy"} <= set(metrics)
    assert float(metrics["val/fid"]) > 0 and 0.5 <= float(metrics["val/nn_accuracy"]) <= 1

    path = tmp_path / "vae.ckpt"
    trainer.save_checkpoint(path)
    restored = VAE.load_from_checkpoint(path)
    restored.set_feature_extractor(extractor)
    real = tiny_images(n=128).images[:100]
    torch.manual_seed(1)
    first = restored.sample_quality(real)
    torch.manual_seed(1)
    assert restored.sample_quality(real) == first  # same samples, same numbers
    assert set(first) == {"fid", "nn_accuracy"}


def test_without_a_feature_extractor_the_one_nn_test_runs_on_pixels(tiny_images):
    model = VAE(latent_dim=4)
    images = tiny_images(n=50).images
    assert set(model.sample_quality(images)) == {"nn_accuracy"}


def test_a_missing_feature_classifier_says_how_to_train_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m zoo.evaluation.fid_features --out .*missing.ckpt"):
        ClassifierFeatures.from_checkpoint(tmp_path / "missing.ckpt")
    model = VAE(fid_classifier=str(tmp_path / "missing.ckpt"))
    with pytest.raises(FileNotFoundError, match="FID feature classifier"):
        model.feature_extractor()


def test_inception_features_name_the_missing_file_and_the_url_that_downloads_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception.pth is missing.*weights-inception-2015-12-05-6726825d"):
        InceptionFeatures(tmp_path / "pt_inception.pth")


def test_classifier_features_are_the_penultimate_layer_of_a_saved_classifier(tiny_images, make_trainer, tmp_path):
    classifier = ImageClassifier(network="convnet")
    trainer = make_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(classifier, tiny_images())
    path = tmp_path / "classifier.ckpt"
    trainer.save_checkpoint(path)
    features = ClassifierFeatures.from_checkpoint(path)
    images = torch.rand(5, 1, 28, 28)
    out = features(images)
    assert features.layer_name == "classifier.2" and out.shape == (5, 576)
    net = classifier.net.eval()
    with torch.no_grad():
        expected = net.classifier[:2](net.pool(net.features((images - 0.1307) / 0.3081)))
    torch.testing.assert_close(out, expected)


def test_the_feature_classifier_training_script_stays_out_of_the_library():
    import zoo.generative.features as features

    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(Path(features.__file__).read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert not any(str(m).startswith("datamodules") for m in imported)
    assert not any(str(m).startswith("zoo.classification") for m in imported)  # families import no other family
    root = Path(__file__).resolve().parents[2]
    check = "import sys, zoo, zoo.generative; print('zoo.evaluation.fid_features' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=root)
    assert loaded.stdout.strip() == "False"  # import zoo / zoo.generative leave the training script out
    run = subprocess.run([sys.executable, "-m", "zoo.evaluation.fid_features", "--help"], capture_output=True,
                         text=True, check=True, cwd=root)  # fmt: skip
    assert "usage: python -m zoo.evaluation.fid_features" in run.stdout and "--out" in run.stdout


def test_a_missing_feature_classifier_stops_the_run_before_the_first_step(tiny_images, tmp_path, monkeypatch):
    import pytorch_lightning as pl

    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "empty_cache"))
    model = VAE(latent_dim=4, fid_classifier="auto")
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, max_steps=5, enable_progress_bar=False)
    with pytest.raises(FileNotFoundError, match=r"empty_cache/fid_lenet5_mnist\.ckpt not found.*fid_classifier: auto"):
        trainer.fit(model, tiny_images(n=64))
    assert trainer.global_step == 0
