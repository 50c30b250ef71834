"""Image metrics: LPIPS (metric and loss), the BAPPS human-judgement harness, and the pretrained
feature networks they share with the Fréchet-distance code.
"""

from difflab.metrics.backbones import (
    AlexNetFeatures,
    SqueezeNetFeatures,
    VGG16Features,
    build_backbone,
    imagenet_normalize,
)
from difflab.metrics.lpips import LPIPS, InputRangeWarning, LPIPSLoss, lpips_distance
from difflab.metrics.pretrained import load_backbone_weights, load_lpips_linear_weights

__all__ = [
    "LPIPS",
    "AlexNetFeatures",
    "InputRangeWarning",
    "LPIPSLoss",
    "SqueezeNetFeatures",
    "VGG16Features",
    "build_backbone",
    "imagenet_normalize",
    "load_backbone_weights",
    "load_lpips_linear_weights",
    "lpips_distance",
]
