"""``genzoo serve``: one HTTP server for every family -- OpenAI-compatible text endpoints, image generation and
scoring, Prometheus metrics -- over a registry of loaded run directories and pretrained models.

FastAPI (typed request bodies from pydantic, the same library the model contract uses) and uvicorn (the ASGI server
FastAPI documents) are the ``serve`` extra.
"""

from genzoo.serve.app import ServeSettings, create_app
from genzoo.serve.registry import ModelRegistry, ServedModel

__all__ = ["ModelRegistry", "ServeSettings", "ServedModel", "create_app"]
