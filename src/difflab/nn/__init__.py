"""Layers shared by the models: timestep embeddings, attention, residual blocks."""

from difflab.nn.attention import SpatialSelfAttention, packed_attention
from difflab.nn.blocks import Downsample, ResBlock, Upsample, group_norm
from difflab.nn.embedding import TimestepEmbedding, sinusoidal_embedding

__all__ = [
    "Downsample",
    "ResBlock",
    "SpatialSelfAttention",
    "TimestepEmbedding",
    "Upsample",
    "group_norm",
    "packed_attention",
    "sinusoidal_embedding",
]
