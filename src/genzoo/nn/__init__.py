"""Layers shared by several models (one place, so model files stay about their method)."""

from genzoo.nn.conv import ConvDecoder, ConvEncoder, mlp, resolution_levels

__all__ = ["ConvDecoder", "ConvEncoder", "mlp", "resolution_levels"]
