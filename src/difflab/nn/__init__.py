"""Layers shared by the models: timestep embeddings, attention, residual and transformer blocks."""

from difflab.nn.attention import SpatialSelfAttention, multihead_attention, packed_attention
from difflab.nn.blocks import Downsample, ResBlock, Upsample, group_norm
from difflab.nn.embedding import TimestepEmbedding, sinusoidal_embedding
from difflab.nn.transformer import (
    CrossAttention,
    GegluFeedForward,
    SelfAttention,
    SpatialTransformer,
    TransformerBlock,
)

__all__ = [
    "CrossAttention",
    "Downsample",
    "GegluFeedForward",
    "ResBlock",
    "SelfAttention",
    "SpatialSelfAttention",
    "SpatialTransformer",
    "TimestepEmbedding",
    "TransformerBlock",
    "Upsample",
    "group_norm",
    "multihead_attention",
    "packed_attention",
    "sinusoidal_embedding",
]
