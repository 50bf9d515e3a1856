"""Autoregressive models: recurrent language models, the token-sequence base shared with gpt, and pixel-level models
(PixelCNN, gated PixelCNN) and MADE for images and vectors."""
