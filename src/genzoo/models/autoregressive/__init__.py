"""Autoregressive models: recurrent language models and the token-sequence base they share with gpt."""
