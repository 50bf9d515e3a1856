"""Transformers: gpt trained from scratch and pretrained Hugging Face causal language models."""
