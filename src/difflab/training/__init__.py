"""Training: the loop, EMA, checkpoints."""

from difflab.io.checkpoint import load_checkpoint, save_checkpoint
from difflab.training.ema import EMA
from difflab.training.loop import train

__all__ = ["EMA", "load_checkpoint", "save_checkpoint", "train"]
