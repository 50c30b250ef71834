"""The prompt box: text-to-image models (an Imagen cascade or stage, a caption model) take a
prompt; bad prompts are one sentence and a 422; a prompt typed in the browser makes the image the
Python API makes for it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.diffusion import NoiseSchedule
from difflab.models import (
    TextEncoderConfig,
    attach_caption_encoder,
    build_caption_encoder,
    build_model,
    model_config,
)
from difflab.pipelines import CascadePipeline, DiffusionPipeline, StageSettings
from difflab.samplers import DEFAULT_SAMPLER
from difflab.web import GenerateRequest, ModelCatalog, RequestRefused, ServedModel, ServeLimits
from tests.web.conftest import SketchEcho, call, pipeline_of, running_server

BASE = "imagen_digits_base16"  # shipped: the cascade's 16 px base stage, served alone
LIMITS = ServeLimits(max_steps=50, max_n=4, queue_size=1)
PROMPT = "a red 7 on a yellow background"


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    served = ModelCatalog.load([BASE]).get(BASE)
    return ModelCatalog([ServedModel("echo", pipeline_of(SketchEcho())), served])


BAD_PROMPTS = [
    # (body, words the one sentence must hold)
    ({"model": "echo", "prompt": "a cat"}, "model echo does not read a prompt"),
    ({"model": BASE, "prompt": "x" * 501}, "prompt: string should have at most 500 characters"),
    ({"model": BASE, "prompt": "a red\n7"}, "control characters"),
    ({"model": BASE, "prompt": "seven " * 30}, "has 32 word pieces but model"),
    ({"model": BASE, "guidance_scale": 3}, "needs a prompt to guide towards"),
    ({"model": BASE, "prompt": PROMPT, "threshold": "soft"}, "unknown threshold 'soft'"),
    ({"model": BASE, "prompt": PROMPT, "label": 7}, "takes no label"),
    ({"model": BASE, "prompt": PROMPT, "noise_level": 2}, "noise_level: input should be less"),
    ({"model": BASE, "prompt": 7}, "prompt: input should be a valid string"),
]


def test_bad_prompts_are_one_sentence_and_a_422(catalog):
    """Fails if a prompt reaches a model that cannot read it, if an over-long prompt is silently
    truncated, or if any bad prompt is a 500, a traceback or pydantic's raw error list."""
    with running_server(catalog, LIMITS) as base:
        for body, words in BAD_PROMPTS:
            status, answer = call(f"{base}/api/generate", body)
            assert status == 422 and set(answer) == {"error"}, (body, status, answer)
            assert words in answer["error"] and answer["error"].endswith("."), answer
        models = {m["name"]: m for m in call(f"{base}/api/models")[1]["models"]}
    assert models[BASE]["prompt"] and not models["echo"]["prompt"]
    assert models[BASE]["prompt_limit"] == 24


def test_a_caption_model_reads_the_prompt_and_refuses_unknown_words():
    """A latent-diffusion-style caption model (learned encoder) gets the prompt's tokens. Fails if
    the prompt is dropped or an unknown word silently becomes the unknown token."""
    arch, config = model_config("unet-tiny-text")
    net = build_model(arch, config)
    encoder = build_caption_encoder(TextEncoderConfig(dim=config.context_dim), ["red apple"])
    attach_caption_encoder(net, encoder)
    pipe = DiffusionPipeline.from_network(net, NoiseSchedule.from_name("linear"))
    model = ServedModel("captioned", pipe)
    run = model.prepare(GenerateRequest(model="captioned", prompt=" red apple ", n=2), LIMITS)
    expected = pipe.caption_conditioning(["red apple"] * 2)
    assert torch.equal(run.conditioning.tokens, expected.tokens)
    assert run.conditioning.token_mask.sum() == 4
    with pytest.raises(RequestRefused, match=r"does not know the word\(s\) green"):
        model.prepare(GenerateRequest(model="captioned", prompt="green apple"), LIMITS)


def png_array(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_a_prompt_typed_in_the_browser_makes_the_api_image(browser, catalog):
    """A person picks the text-to-image model, types a prompt key by key (guidance left at its
    default) and presses Enter. Fails if the prompt box stays disabled, if the guidance box does
    not start at the cascade's default weight, if the typed text does not reach the frozen encoder
    intact (the image must equal the Python API's for that prompt, and differ from the null
    prompt's), or if the gallery does not show the prompt."""
    with running_server(catalog, LIMITS) as base:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(base)
        page.wait_for_selector(f"#model option[value='{BASE}']", state="attached")
        assert page.is_disabled("#prompt")  # the first model, echo, reads no prompt
        page.select_option("#model", BASE)
        # a text-to-image model starts at the measured default w and no thresholding
        assert page.input_value("#guidance") == "3" and page.input_value("#threshold") == ""
        page.fill("#steps", "4")
        page.click("#prompt")
        page.keyboard.type(PROMPT)
        page.keyboard.press("Enter")
        page.wait_for_selector("#gallery .card img.sample", timeout=20_000)
        assert page.text_content("#error") == ""
        assert PROMPT in page.text_content("#gallery .card p")
        status, png = call(base + page.get_attribute("#gallery .card img.sample", "src"))
        page.close()
    assert status == 200 and errors == []
    cascade: CascadePipeline = catalog.get(BASE).chain
    # the page sent its default sampler (the library's), not the cascade's own default (DDIM)
    settings = StageSettings(steps=4, sampler=DEFAULT_SAMPLER, guidance_scale=3.0, threshold=None)

    def api_image(prompt: str) -> np.ndarray:
        image = cascade.generate([prompt], settings, seed=0)[0]  # (3, 16, 16) in [-1, 1]
        return np.round((image.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)

    served = png_array(png)
    assert served.shape == (16, 16, 3)
    assert np.abs(served.astype(int) - api_image(PROMPT)).max() <= 1
    assert np.abs(served.astype(int) - api_image("")).max() > 10
