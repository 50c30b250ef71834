"""A real ControlNet model (a locked tiny U-Net plus a ControlNet) through the web API: the hint
and the control scale reach the network."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.diffusion import NoiseSchedule
from difflab.models import build_model, model_config
from difflab.models.controlnet import ControlNetConfig, build_controlnet
from difflab.pipelines import DiffusionPipeline
from difflab.pipelines.control import controlled_pipeline
from difflab.web import ModelCatalog
from tests.web.conftest import call, running_server
from tests.web.test_api import png_url, wait_for


def controlled() -> DiffusionPipeline:
    """A tiny class-conditional U-Net with a random ControlNet (its joining layers not zero), so
    that the hint changes the output as a trained one's would."""
    torch.manual_seed(0)
    base = build_model(*model_config("unet-tiny", num_classes=10))
    control = build_controlnet(base, ControlNetConfig(zero_init=False))
    with torch.no_grad():
        for net, std in ((base, 0.05), (control, 0.3)):
            for p in net.parameters():
                p.normal_(0, std)
    pipe = DiffusionPipeline.from_network(base, NoiseSchedule.from_name("linear"))
    return controlled_pipeline(pipe, [control], "<test>")


def sketch(row: int) -> str:
    image = Image.new("L", (28, 28))
    image.paste(255, (4, row, 24, row + 2))
    return png_url(image)


@pytest.fixture(scope="module")
def server():
    with running_server(ModelCatalog.from_pipelines({"control": controlled()})) as base:
        yield base


def generate(base: str, **fields) -> np.ndarray:
    body = {"model": "control", "steps": 2, "label": 3, "guidance_scale": 2.0, **fields}
    status, job = call(f"{base}/api/generate", body)
    assert status == 202, job
    state = wait_for(base, job["id"], "done")
    png = call(f"{base}{state['images'][0]}")[1]
    return np.asarray(Image.open(io.BytesIO(png)), np.int16)


def test_the_hint_and_the_control_scale_reach_a_controlnet(server):
    """Fails if the hint is not passed as ``Conditioning.control``, if ``control_scale`` is not
    passed to ``generate`` (scale 0 would then still follow the sketch), or if a ControlNet model
    accepts a request without a sketch."""
    models = call(f"{server}/api/models")[1]["models"]
    assert models[0]["control"] and models[0]["control_scale"] and models[0]["guidance"]
    followed = generate(server, hint=sketch(6), control_scale=1.0)
    other_sketch = generate(server, hint=sketch(18), control_scale=1.0)
    off = generate(server, hint=sketch(6), control_scale=0.0)
    off_other = generate(server, hint=sketch(18), control_scale=0.0)
    assert np.abs(followed - other_sketch).max() > 5  # the sketch changes the image (by 17)
    assert np.array_equal(off, off_other)  # scale 0: the sketch does nothing
    assert np.abs(followed - off).max() > 5
    status, answer = call(f"{server}/api/generate", {"model": "control", "label": 3})
    assert status == 422 and "follows a sketch" in answer["error"]
