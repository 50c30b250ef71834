"""Reading pipelines and noisy classifiers from checkpoints (paths or shipped names)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from difflab.config import DiffusionConfig, dataclass_from_dict
from difflab.diffusion import NoiseSchedule
from difflab.diffusion.schedule import schedule_from_config
from difflab.errors import DifflabError
from difflab.io.checkpoint import (
    build_within_file,
    load_checkpoint,
    load_checkpoint_meta,
    load_weights_strict,
    split_prefix,
)
from difflab.io.weights import resolve_checkpoint
from difflab.models import attach_caption_encoder, build_model, caption_encoder_from_meta
from difflab.models.classifier import (
    CLASSIFIER_ARCH,
    CLASSIFIER_KIND,
    NoisyClassifier,
    check_classifier_fits,
    classifier_config_from_dict,
)
from difflab.models.controlnet import CONTROL_KIND, ControlledNetwork, build_controlnet
from difflab.pipelines.control import controlled_pipeline, read_controlnet, recorded_base_path
from difflab.pipelines.description import ModelDescription
from difflab.pipelines.diffusion import DiffusionPipeline
from difflab.pipelines.latent import latent_stage_of


def schedule_from_meta(diffusion: dict[str, Any]) -> NoiseSchedule:
    """The schedule a checkpoint's ``diffusion`` entry describes."""
    return schedule_from_config(dataclass_from_dict(DiffusionConfig, diffusion, "diffusion"))


def load_pipeline(
    checkpoint: str | Path, device: str | torch.device = "cpu", precision: str = "fp32"
) -> DiffusionPipeline:
    """Load a ``kind: diffusion`` checkpoint: a path, or a shipped name such as ``"mnist_ddim"``.

    The EMA weights are used when the file holds them (a training state), else the model's. A
    model trained on captions gets its caption encoder back (``pipe.text_encoder``), rebuilt from
    the vocabulary and settings in the checkpoint's JSON, its weights under ``text_encoder.``.
    A ControlNet checkpoint (``kind: controlnet``) loads with its base (:func:`load_control_pipeline`).
    """
    path = resolve_checkpoint(checkpoint)
    if load_checkpoint_meta(path).get("kind") == CONTROL_KIND:
        return load_control_pipeline(path, device, precision)
    tensors, meta = load_checkpoint(path, kind="diffusion")
    arch, config = ModelDescription.architecture(meta, path)
    net = build_within_file(lambda: build_model(arch, config), tensors, path)
    if "text_encoder" in meta:
        encoder = caption_encoder_from_meta(meta["text_encoder"], str(path))
        try:
            attach_caption_encoder(net, encoder)
        except DifflabError as error:
            raise DifflabError(f"{path}: {error}") from None
    description = ModelDescription.from_meta(meta, path, net.conditioning_fields)
    weights = split_prefix(tensors, "ema") or split_prefix(tensors, "model")
    load_weights_strict(net, weights, path)
    schedule = schedule_from_config(description.diffusion)  # parsed once, with the description
    autoencoder = None
    if "autoencoder" in meta:
        autoencoder = latent_stage_of(meta["autoencoder"], path).autoencoder.to(device)
    return DiffusionPipeline(
        net.to(device).eval(), schedule, description, autoencoder, precision=precision
    )


def load_control_pipeline(
    checkpoints: str | Path | Sequence[str | Path],
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> DiffusionPipeline:
    """Load one or more ControlNet checkpoints of the same base, with that base.

    The hint of several ControlNets is their hints stacked along the channels, in the order
    given (a 1-channel hint serves them all).
    """
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not paths:
        raise DifflabError("give at least one ControlNet checkpoint.")
    read = [read_controlnet(p) for p in paths]
    digests = {meta["base"].get("sha256") for _, _, _, meta in read}
    if len(digests) > 1:
        raise DifflabError(
            "these ControlNets were trained on different base models; only ControlNets of one "
            "base run together."
        )
    first_path, _, _, first_meta = read[0]
    base = load_pipeline(recorded_base_path(first_meta["base"], first_path), device, precision)
    if isinstance(base.net, ControlledNetwork):
        raise DifflabError(
            f"{first_path}: the base of a ControlNet must be a plain diffusion model."
        )
    controls = []
    for path, config, weights, _ in read:
        try:
            control = build_controlnet(base.net, config)
        except DifflabError as error:
            raise DifflabError(f"{path}: {error}") from None
        load_weights_strict(control, weights, path)
        controls.append(control)
    return controlled_pipeline(base, controls, ", ".join(str(p) for p, *_ in read))


def load_noisy_classifier(
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    *,
    pipeline: DiffusionPipeline | None = None,
) -> NoisyClassifier:
    """Load a ``kind: classifier`` checkpoint (from ``difflab train`` of a classifier config).

    With ``pipeline``, also check that the classifier fits it: same sample channels and size, and
    trained on the noise of the same schedule (the same alpha_bar for every t).

    Returns:
        The classifier in eval mode with frozen weights (guidance differentiates only x_t).
    """
    path = resolve_checkpoint(checkpoint)
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != CLASSIFIER_KIND:
        raise DifflabError(
            f"{path} holds a {meta.get('kind')!r} checkpoint, not a noisy classifier; give the "
            "model.safetensors of `difflab train configs/mnist_classifier.yaml`."
        )
    for key in ("arch", "model", "diffusion", "data"):
        if key not in meta:
            raise DifflabError(
                f"{path} lacks the {key!r} entry of a classifier checkpoint; retrain it with difflab."
            )
    if meta["arch"] != CLASSIFIER_ARCH:
        raise DifflabError(
            f"{path} is a classifier of unknown architecture {meta['arch']!r}; expected "
            f"{CLASSIFIER_ARCH!r}."
        )
    config = classifier_config_from_dict(meta["model"], f"{path}: model")
    net = build_within_file(lambda: NoisyClassifier(config), tensors, path)
    load_weights_strict(net, split_prefix(tensors, "model"), path)
    net = net.to(device).eval().requires_grad_(False)
    net.meta = meta
    if pipeline is not None:
        _check_classifier_fits(path, net, meta, pipeline)
    return net


def _check_classifier_fits(
    path: Path, net: NoisyClassifier, meta: dict[str, Any], pipeline: DiffusionPipeline
) -> None:
    try:
        check_classifier_fits(net, pipeline.description.sample_shape, torch.empty(0))
    except DifflabError as error:
        raise DifflabError(f"{path}: {error}") from None
    schedule = schedule_from_meta(meta["diffusion"])
    same = schedule.num_timesteps == pipeline.schedule.num_timesteps and torch.allclose(
        schedule.alpha_bar, pipeline.schedule.alpha_bar
    )
    if not same:
        mine = pipeline.description.diffusion
        raise DifflabError(
            f"{path} was trained on the noise of a {meta['diffusion']['schedule']} schedule with "
            f"T = {meta['diffusion']['num_timesteps']} but the model uses {mine.schedule} with "
            f"T = {pipeline.schedule.num_timesteps}; train the classifier with the model's "
            "diffusion section."
        )
