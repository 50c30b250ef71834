"""LPIPS as the paper defines it: behaviour on real photos, the reference's example images, the
options (uncalibrated, spatial, input range, grayscale, v0.0), gradients, and bad input."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from difflab.errors import DifflabError
from difflab.metrics import LPIPS, InputRangeWarning, LPIPSLoss, lpips_distance
from difflab.metrics.lpips import NORM_EPS, SCALING_SCALE, SCALING_SHIFT, unit_normalize
from difflab.metrics.pretrained import official_lpips_weight_file, read_weight_file

# the reference repository's example images, kept in the repository (BSD-2, LICENSE beside them)
EXAMPLES = Path(__file__).resolve().parent / "data" / "lpips"


def official_weight_file(net: str, version: str = "0.1") -> Path:
    """The official lpips package's linear-layer file; a test that needs it fails without it."""
    path = official_lpips_weight_file(net, version)
    assert path is not None, "the official lpips package is not installed; run `make install`"
    return path


def photo_batch(size: int = 64) -> torch.Tensor:
    """scikit-image's astronaut, coffee and chelsea, center-cropped and resized: (3, 3, S, S)."""
    return _photo_batch(size).clone()


@functools.lru_cache(maxsize=2)
def _photo_batch(size: int) -> torch.Tensor:
    from skimage import data

    images = []
    for image in (data.astronaut(), data.coffee(), data.chelsea()):
        height, width = image.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        crop = Image.fromarray(image[top : top + side, left : left + side])
        pixels = np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC), np.float32)
        images.append(torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1)
    return torch.stack(images)  # (3, 3, S, S) in [-1, 1]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding: (B, C, H, W) -> same shape."""
    radius = max(1, int(3 * sigma + 0.5))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(x.shape[1], 1, 1)  # (C, 1, K)
    channels = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel[:, :, None, :], groups=channels)  # along width
    return F.conv2d(x, kernel[:, :, :, None], groups=channels)  # along height


def read_example(name: str) -> torch.Tensor:
    path = EXAMPLES / f"{name}.png"
    assert path.is_file(), f"{path} is missing: the LPIPS example images belong in the repository"
    pixels = np.asarray(Image.open(path).convert("RGB"), np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None] / 127.5 - 1  # (1, 3, 64, 64)


@pytest.fixture(scope="module")
def alex() -> LPIPS:
    return LPIPS("alex")


@pytest.fixture(scope="module")
def vgg() -> LPIPS:
    return LPIPS("vgg")


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return photo_batch(64)


# --- what the paper defines ---------------------------------------------------------------------


def test_structure_matches_the_reference(alex, vgg):
    assert alex.backbone.tap_channels == (64, 192, 384, 256, 256)
    assert vgg.backbone.tap_channels == (64, 128, 256, 512, 512)
    # taps are the outputs of ReLUs: alex relu1..5, vgg relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    for net in (alex, vgg):
        for index in net.backbone.tap_indices:
            assert isinstance(net.backbone.features[index], torch.nn.ReLU)
    assert [alex.backbone.features[i - 1].weight.shape[1] for i in alex.backbone.tap_indices] == [
        3,
        64,
        192,
        384,
        256,
    ]
    assert len(vgg.backbone.conv_names()) == 13
    assert SCALING_SHIFT == (-0.030, -0.088, -0.188) and SCALING_SCALE == (0.458, 0.448, 0.450)
    assert NORM_EPS == 1e-10
    # the folded scaling layer is (x - shift) / scale
    x = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1, 1).expand(3, 3, 1, 1)
    scaled = torch.addcmul(alex.input_offset, x, alex.input_gain)
    shift, scale = torch.tensor(SCALING_SHIFT).view(1, 3, 1, 1), torch.tensor(SCALING_SCALE)
    torch.testing.assert_close(scaled, (x - shift) / scale.view(1, 3, 1, 1))


def test_equation_1_by_hand(alex):
    """Normalise each tap, weight the squared difference, average over space, sum the layers."""
    torch.manual_seed(0)
    x0, x1 = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    shift, scale = torch.tensor(SCALING_SHIFT).view(1, 3, 1, 1), torch.tensor(SCALING_SCALE)
    with torch.no_grad():
        taps0 = alex.backbone((x0 - shift.view(1, 3, 1, 1)) / scale.view(1, 3, 1, 1))
        taps1 = alex.backbone((x1 - shift.view(1, 3, 1, 1)) / scale.view(1, 3, 1, 1))
        expected = 0
        for t0, t1, w in zip(taps0, taps1, alex.lin_weights, strict=True):
            n0 = t0 / (torch.sqrt((t0**2).sum(1, keepdim=True)) + 1e-10)
            n1 = t1 / (torch.sqrt((t1**2).sum(1, keepdim=True)) + 1e-10)
            expected = expected + ((n0 - n1) ** 2 * w).sum(1).mean((1, 2))
        torch.testing.assert_close(alex(x0, x1), expected, rtol=1e-5, atol=1e-6)


def test_identity_gives_zero(alex, vgg, photos):
    with torch.no_grad():
        assert alex(photos, photos).abs().max() < 1e-6
        assert vgg(photos[:1], photos[:1]).abs().max() < 1e-6


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_distance_grows_with_noise(net, photos, request):
    metric = request.getfixturevalue(net)
    images = photos if net == "alex" else photo_batch(32)[:2]  # VGG is slow on 2 cores
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    sigmas = (0.02, 0.05, 0.1, 0.2, 0.4)
    with torch.no_grad():
        d = torch.stack([metric(images, (images + s * noise).clamp(-1, 1)) for s in sigmas])
    assert (d[1:] > d[:-1]).all(), d  # (sigmas, images): increasing down every column


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_distance_grows_with_blur(net, photos, request):
    metric = request.getfixturevalue(net)
    images = photos if net == "alex" else photo_batch(32)[:2]  # VGG is slow on 2 cores
    sigmas = (0.5, 1.0, 2.0, 3.0)
    with torch.no_grad():
        d = torch.stack([metric(images, gaussian_blur(images, s)) for s in sigmas])
    assert (d[1:] > d[:-1]).all(), d


def test_reference_example_images_rank_as_the_reference_expects(alex, vgg):
    """The reference's test_network.py compares ex_ref with ex_p0 and ex_p1: p1 is closer.

    VGG v0.1 values as printed by the official PyTorch package (quoted by the lpips-tf2.x port,
    "Distance: ex_ref.png <-> ex_p0.png = 0.569 / ex_p1.png = 0.422"): agreement to 3 decimals.
    AlexNet: the reference prints no numbers in its README; 0.722 / 0.138 is what its own code
    gives (test_lpips_reference.py runs it), pinned here so that any drift shows.
    """
    ref, p0, p1 = read_example("ex_ref"), read_example("ex_p0"), read_example("ex_p1")
    with torch.no_grad():
        d_alex = alex(torch.cat([ref, ref]), torch.cat([p0, p1]))
        d_vgg = vgg(torch.cat([ref, ref]), torch.cat([p0, p1]))
    assert d_alex[1] < d_alex[0] and d_vgg[1] < d_vgg[0]
    assert [round(v, 3) for v in d_vgg.tolist()] == [0.569, 0.422]
    assert [round(v, 3) for v in d_alex.tolist()] == [0.722, 0.138]


# --- options ------------------------------------------------------------------------------------


def test_uncalibrated_weights_all_channels_equally(alex, photos):
    plain = LPIPS("alex", calibrated=False)
    noisy = (
        photos + 0.1 * torch.randn(photos.shape, generator=torch.Generator().manual_seed(1))
    ).clamp(-1, 1)
    with torch.no_grad():
        calibrated, uncalibrated = alex(photos, noisy), plain(photos, noisy)
        features0 = plain.normalized_features(photos)
        features1 = plain.normalized_features(noisy)
        by_hand = sum(
            ((f0 - f1) ** 2).sum(1).mean((1, 2))
            for f0, f1 in zip(features0, features1, strict=True)
        )
    assert all(w.eq(1).all() for w in plain.lin_weights)
    torch.testing.assert_close(uncalibrated, by_hand, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(calibrated, uncalibrated, rtol=0.1)


@pytest.mark.parametrize(("net", "size", "rtol"), [("alex", 64, 1e-2), ("vgg", 32, 1e-5)])
def test_spatial_map_mean_equals_the_distance(net, size, rtol, request):
    """Exact where every tap side divides the input (VGG at 2^k), close otherwise (AlexNet)."""
    metric = request.getfixturevalue(net)
    images = photo_batch(size)[:2]
    blurred = gaussian_blur(images, 1.5)
    with torch.no_grad():
        distance = metric(images, blurred)
        distance_map = metric(images, blurred, spatial=True)
    assert distance_map.shape == (2, 1, size, size) and (distance_map >= 0).all()
    torch.testing.assert_close(distance_map.mean((1, 2, 3)), distance, rtol=rtol, atol=1e-7)


def test_zero_one_input_range_matches_minus_one_one(alex, photos):
    zero_one = LPIPS("alex", input_range=(0, 1))
    noisy = gaussian_blur(photos, 1.0)
    with torch.no_grad():
        expected = alex(photos, noisy)
        got = zero_one((photos + 1) / 2, (noisy + 1) / 2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_wrong_input_range_is_hard_to_miss(photos):
    metric = LPIPS("alex")
    pixels = (photos + 1) * 127.5  # 0..255 floats
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric(photos, photos)  # the right range: silent
    with pytest.warns(
        InputRangeWarning, match=r"outside the declared input_range \[-1, 1\]"
    ) as caught:
        metric(pixels, pixels)
    assert caught[0].filename == __file__  # points at the caller
    with pytest.warns(InputRangeWarning, match=r"input_range=\(0, 1\)"):
        metric((photos + 1) / 2, (photos + 1) / 2)  # [0, 1] data, default range
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric(pixels, pixels)  # each kind once per metric: a training loop is not flooded
    with pytest.warns(InputRangeWarning, match=r"outside the declared input_range \[0, 1\]"):
        LPIPS("alex", input_range=(0, 1))(photos, photos)  # [-1, 1] data declared [0, 1]


def test_grayscale_is_repeated_to_three_channels(alex, photos):
    gray = photos.mean(1, keepdim=True)  # (B, 1, H, W)
    with torch.no_grad():
        torch.testing.assert_close(
            alex(gray, gray.flip(-1)),
            alex(gray.expand(-1, 3, -1, -1), gray.flip(-1).repeat(1, 3, 1, 1)),
        )


def test_batched_equals_one_by_one_and_broadcasts_a_single_reference(alex, photos):
    others = gaussian_blur(photos, 2.0)
    with torch.no_grad():
        batched = alex(photos, others)
        single = torch.cat([alex(photos[i : i + 1], others[i : i + 1]) for i in range(3)])
        broadcast = alex(photos[:1], others)
        repeated = alex(photos[:1].expand(3, -1, -1, -1), others)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(broadcast, repeated, rtol=1e-4, atol=1e-6)


def test_version_0_0_reads_the_official_file(photos):
    path = official_weight_file("alex", "0.0")
    old = LPIPS("alex", version="0.0", lin_weights=path)
    expected = read_weight_file(path)["lin0.model.1.weight"]
    torch.testing.assert_close(old.lin_weights[0], expected)
    with torch.no_grad():
        d_old = old(photos, gaussian_blur(photos, 1.0))
    assert (d_old > 0).all()
    assert torch.equal(old.input_gain, torch.ones(1, 3, 1, 1))  # v0.0: no scaling layer


def test_squeezenet_and_v0_0_need_files():
    with pytest.raises(DifflabError, match="squeezenet1_1 state dict"):
        LPIPS("squeeze")
    with pytest.raises(DifflabError, match=r"v0\.0 linear layers for alex are not bundled"):
        LPIPS("alex", version="0.0")


def test_squeezenet_with_weight_files(tmp_path):
    """SqueezeNet 1.1 runs from user-given files (random backbone here; none ships offline)."""
    from safetensors.torch import save_file

    from difflab.metrics.backbones import SqueezeNetFeatures

    generator = torch.Generator().manual_seed(0)
    backbone = SqueezeNetFeatures(weights=None)
    state = {
        name: torch.randn(b.shape, generator=generator) * 0.1
        for name, b in backbone.named_buffers()
    }
    save_file(state, tmp_path / "squeezenet1_1.safetensors")
    lin = {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1)
        for i, c in enumerate(backbone.tap_channels)
    }
    torch.save(lin, tmp_path / "squeeze.pth")
    metric = LPIPS(
        "squeeze",
        backbone_weights=tmp_path / "squeezenet1_1.safetensors",
        lin_weights=tmp_path / "squeeze.pth",
    )
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert metric(x, x).abs().max() < 1e-6
        assert (metric(x, x.flip(0)) > 0).all()


# --- gradients and the loss ---------------------------------------------------------------------


def test_gradients_flow_to_the_input_not_the_network(alex, photos):
    x = gaussian_blur(photos, 1.0).requires_grad_(True)
    distance = alex(x, photos).sum()
    distance.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert list(alex.parameters()) == []
    assert all(not b.requires_grad and b.grad is None for b in alex.buffers())
    with torch.no_grad():
        torch.testing.assert_close(alex(x, photos).sum(), distance.detach())


def test_unit_normalize_has_finite_gradient_at_zero():
    y = torch.zeros(1, 4, 2, 2, requires_grad=True)
    unit_normalize(y).sum().backward()
    assert torch.isfinite(y.grad).all()


def test_lpips_loss_is_frozen_and_invisible_to_the_optimizer(photos):
    loss_fn = LPIPSLoss()  # VGG
    assert loss_fn.metric.net == "vgg"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1))
    model.loss = loss_fn
    assert [p.shape for p in model.parameters()] == [(3, 3, 3, 3), (3,)]
    assert set(model.state_dict()) == {"0.weight", "0.bias"}  # no VGG in checkpoints
    model.train()
    assert not loss_fn.training and not loss_fn.metric.training
    target = photos[:1, :, :32, :32]
    loss = loss_fn(model[0](target), target)
    assert loss.ndim == 0
    loss.backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    none = LPIPSLoss("alex", reduction="none")(
        target.expand(2, -1, -1, -1), target.flip(-1).expand(2, -1, -1, -1)
    )
    assert none.shape == (2,)


def test_functional_form_reuses_one_metric(photos):
    other = gaussian_blur(photos, 1.0)
    first = lpips_distance(photos, other)
    assert not first.requires_grad
    torch.testing.assert_close(lpips_distance(photos, other), first)
    torch.testing.assert_close(
        lpips_distance((photos + 1) / 2, (other + 1) / 2, input_range=(0, 1)),
        first,
        rtol=1e-4,
        atol=1e-6,
    )


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x0", "x1", "message"),
    [
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), None, "convert 8-bit pixels"),
        (torch.zeros(1, 4, 64, 64), None, "4 channels"),
        (torch.zeros(3, 64, 64), None, r"expected a batch \(B, C, H, W\)"),
        (torch.zeros(1, 3, 16, 16), None, "smaller than the 31×31"),
        (torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 32, 32), "equal size"),
        (torch.zeros(2, 3, 64, 64), torch.zeros(3, 3, 64, 64), "batch sizes must match"),
    ],
)
def test_bad_input_is_one_clear_sentence(alex, x0, x1, message):
    with pytest.raises(DifflabError, match=message):
        alex(x0, x0 if x1 is None else x1)


def test_bad_options():
    with pytest.raises(DifflabError, match="input_range"):
        LPIPS("alex", input_range=(0, 255))
    with pytest.raises(DifflabError, match="unknown network"):
        LPIPS("resnet")
    with pytest.raises(DifflabError, match="version"):
        LPIPS("alex", version="0.2")
    with pytest.raises(DifflabError, match="reduction"):
        LPIPSLoss("alex", reduction="max")
