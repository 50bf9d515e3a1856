"""The FastAPI application: routes, limits and bookkeeping around a :class:`ModelRegistry`.

Routes: ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /v1/models``, ``POST /v1/completions`` and ``POST
/v1/chat/completions`` (:mod:`genzoo.serve.text`), ``POST /v1/images/generations``, ``POST /v1/edits``, ``POST
/v1/score``, ``GET /v1/files/{name}`` (images returned as URLs). Cascades (:mod:`genzoo.serve.cascade`) answer text
and image requests under their own names; every request has a deadline (:mod:`genzoo.serve.deadline`). Model work
runs in FastAPI's thread pool (route functions are plain ``def``), one request per model at a time (the model's
lock), so the event loop keeps answering health checks and other models while a sampler runs.
"""

from __future__ import annotations

import base64
import io
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from genzoo._version import __version__
from genzoo.contract import Capability, DataKind, GenerativeModel
from genzoo.editing import edit as edit_image
from genzoo.eval.scoring import example_scores, model_examples
from genzoo.serve.auth import APIKey, KeyRing
from genzoo.serve.batching import Batcher
from genzoo.serve.cascade import Cascade, CascadeConfig, image_confidence
from genzoo.serve.deadline import Deadline
from genzoo.serve.errors import APIError, error_body, install_error_handlers
from genzoo.serve.guardrails import BlockList
from genzoo.serve.metrics import ServerMetrics
from genzoo.serve.registry import ModelRegistry, ServedModel
from genzoo.serve.store import RequestStore
from genzoo.serve.text import install_text_routes
from genzoo.serve.tracking import Tracker

_FILE_NAME = r"^[0-9a-f]{32}\.png$"
#: the playground page (plain HTML and JavaScript, no build step)
PLAYGROUND = (Path(__file__).parent / "playground.html").read_text(encoding="utf-8")


class ServeSettings(BaseModel):
    """Limits of one server (the ``--config`` file's ``limits`` section): requests beyond them get a 400/413."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest request body accepted")
    max_n: int = Field(16, ge=1, description="largest n (completions per prompt) per text request")
    max_images: int = Field(64, ge=1, description="largest number of images per image request")
    max_score_examples: int = Field(1024, ge=1, description="largest number of examples per score request")
    max_tokens: int = Field(1024, ge=1, description="largest max_tokens per text request")
    max_batch: int = Field(256, ge=1, description="dynamic batching: most examples scored in one model call")
    max_wait_ms: float = Field(5.0, ge=0, description="dynamic batching: longest wait for more requests to batch")
    files_dir: Path | None = Field(None, description="where images returned as URLs are kept (default: a temp dir)")
    store: str | None = Field(None, description="SQLAlchemy URL of the request store (sqlite:///requests.db); None: "
                                                "no store")
    dedupe: bool = Field(False, description="answer a request identical to a stored one from the store")
    api_keys: list[APIKey] = Field(default_factory=list, description="clients allowed in; empty: open (loopback)")
    block_list: list[str] = Field(default_factory=list, description="phrases refused in prompts and cut from "
                                                                    "completions")
    request_timeout: float = Field(300.0, gt=0, description="seconds a request may take before it is stopped (504); "
                                                             "a request's own 'timeout' can only shorten it")
    cascades: list[CascadeConfig] = Field(default_factory=list, description="virtual models trying served models "
                                                                            "in order (genzoo.serve.cascade)")
    indexes: dict[str, Path] = Field(default_factory=dict, description="retrieval indexes (genzoo index build) by "
                                                                      "name, for chat requests' rag field")


class ImageRequest(BaseModel):
    """``POST /v1/images/generations``: OpenAI's fields that apply, and genzoo's sampling options."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, description="same seed, same images; None: seed 0")
    label: int | None = Field(None, alias="class", ge=0, description="class to sample (class-conditional models)")
    prompt: str | None = Field(None, description="accepted for OpenAI clients; only text-conditional models use it")
    response_format: Literal["b64_json", "url"] = "b64_json"
    options: dict[str, Any] = Field(default_factory=dict, description="the model's sampling options (steps ...)")
    timeout: float | None = Field(None, gt=0, description="seconds this request may take (capped by the server's)")


class EditRequest(BaseModel):
    """``POST /v1/edits``: inpaint the white pixels of ``mask`` in ``image``, or translate ``image`` without a mask."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str
    image: str = Field(..., description="base64-encoded PNG/JPEG, resized to the model's size")
    mask: str | None = Field(None, description="base64 PNG of the same size: white = generate, black = keep")
    strength: float | None = Field(None, gt=0.0, le=1.0, description="noise level to start from (image-to-image)")
    seed: int = 0
    label: int | None = Field(None, alias="class", ge=0)
    response_format: Literal["b64_json", "url"] = "b64_json"
    options: dict[str, Any] = Field(default_factory=dict, description="the model's sampling options")
    timeout: float | None = Field(None, gt=0, description="seconds this request may take (capped by the server's)")


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a quality score for an earlier answer, by its id."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., max_length=64, description="the id of the answer (its response's 'id')")
    score: float = Field(..., description="quality score (any scale the user chooses, e.g. 0-1 or 1-5)")


class ScoreRequest(BaseModel):
    """``POST /v1/score``: examples in data units (nested lists) or images as base64 PNGs."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: list[Any] | None = Field(None, description="examples in data units: pixel arrays in [0, 1] or vectors")
    images: list[str] | None = Field(None, description="base64-encoded PNG images")


def create_app(registry: ModelRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The server's app for ``registry`` (what ``genzoo serve`` runs with uvicorn; tests use it directly)."""
    settings = settings or ServeSettings()
    files = settings.files_dir or Path(tempfile.mkdtemp(prefix="genzoo-serve-files-"))
    files.mkdir(parents=True, exist_ok=True)
    metrics = ServerMetrics()
    store = RequestStore(settings.store) if settings.store else None
    tracker = Tracker(registry, metrics, store, settings.dedupe)
    keys = KeyRing(settings.api_keys)
    for cascade in settings.cascades:
        registry.add_cascade(cascade)
    app = FastAPI(title="genzoo", version=__version__, docs_url="/docs", redoc_url=None)
    app.state.registry, app.state.settings, app.state.metrics, app.state.store = registry, settings, metrics, store
    install_error_handlers(app)

    @app.middleware("http")
    async def _limit_body(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return JSONResponse(error_body(f"the request body is larger than {settings.max_body_bytes} bytes",
                                           "invalid_request_error"), status_code=413)
        return await call_next(request)

    def caller(authorization: str | None = Header(None)) -> str | None:
        """The client's key id (None when the server is open); 401/429 for a missing, wrong or throttled key."""
        return keys.check(authorization)

    @app.get("/", response_class=HTMLResponse)
    def playground() -> str:
        """The playground page: pick a model, set its options, generate, browse recent requests."""
        return PLAYGROUND

    @app.get("/v1/requests")
    def recent_requests(limit: int = Query(50, ge=1, le=1000), _: str | None = Depends(caller)) -> dict[str, Any]:
        """The latest stored requests, newest first, without their bodies (the playground's list)."""
        if store is None:
            return {"object": "list", "data": []}
        fields = ("id", "created", "endpoint", "model", "status", "latency_s", "prompt_tokens", "completion_tokens",
                  "samples", "session_id", "api_key_id", "quality")
        return {"object": "list", "data": [{k: row[k] for k in fields} for row in store.recent(limit)]}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__,
                "models": {name: {"loaded": served.loaded} for name, served in registry.models.items()}}

    @app.get("/metrics")
    def prometheus(_: str | None = Depends(caller)) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    def list_models(_: str | None = Depends(caller)) -> dict[str, Any]:
        return {"object": "list", "data": [served.describe() for served in registry.models.values()]
                + [registry.describe_cascade(name) for name in registry.cascades]}

    @app.post("/v1/images/generations")
    def images(request: ImageRequest, key: str | None = Depends(caller)) -> dict[str, Any]:
        if request.n > settings.max_images:
            raise APIError(400, f"n is {request.n}; this server draws at most {settings.max_images} images per request",
                           param="n")
        parameters = request.model_dump(by_alias=True)
        deadline = Deadline.of(settings.request_timeout, request.timeout)
        with tracker.track("images", request.model, parameters, key) as tracked:
            cascade = registry.cascades.get(request.model)
            if cascade is None:
                images = _sample(registry, request, request.model, request.n, deadline)
                provenance = registry.model(request.model).provenance
                about = {"model": request.model, "checkpoint": provenance.get("checkpoint"),
                         "step": provenance.get("step")}
            else:
                images, about = _image_cascade(cascade, registry, request, deadline)
            metrics.batch_size.labels("images", request.model).observe(request.n)
            data = [_image_entry(_png(image), request.response_format, files) for image in images]
            return tracked.respond({"id": tracked.id, "created": int(time.time()), "data": data,
                                    "genzoo": {**about, "seed": request.seed or 0}}, samples=request.n)

    @app.post("/v1/edits")
    def edits(request: EditRequest, key: str | None = Depends(caller)) -> dict[str, Any]:
        deadline = Deadline.of(settings.request_timeout, request.timeout)
        with tracker.track("edits", request.model, request.model_dump(by_alias=True), key) as tracked:
            served, model = registry.get(request.model)
            image = _decode_image(request.image, model, "image")
            mask = None if request.mask is None else _decode_image(request.mask, model, "mask", mask=True)
            options = {**request.options, **({} if request.label is None else {"labels": request.label})}
            with served.lock, deadline.watching(model):
                edited = edit_image(model, image, mask, strength=request.strength, seed=request.seed, **options)
            data = [_image_entry(_png(image), request.response_format, files) for image in edited]
            return tracked.respond({"id": tracked.id, "created": int(time.time()), "data": data}, samples=len(data))

    @app.get("/v1/files/{name}")
    def stored_file(name: str) -> FileResponse:
        if not re.match(_FILE_NAME, name) or not (files / name).is_file():
            raise APIError(404, f"no file '{name[:40]}'", code="file_not_found")
        return FileResponse(files / name, media_type="image/png")

    batchers: dict[str, Batcher] = {}

    def batcher(name: str, served: ServedModel, model: GenerativeModel) -> Batcher:
        """The model's score batcher: concurrent score requests become one model call."""

        if name not in batchers:
            batchers[name] = Batcher(lambda x: _scores_now(served, model, x), settings.max_batch,
                                     settings.max_wait_ms / 1000,
                                     on_batch=metrics.batch_size.labels("score", name).observe)
        return batchers[name]

    @app.post("/v1/score")
    def score(request: ScoreRequest, key: str | None = Depends(caller)) -> dict[str, Any]:
        with tracker.track("score", request.model, request.model_dump(), key) as tracked:
            served, model = registry.get(request.model, Capability.ANOMALY_SCORE)
            x = model_examples(model, _score_inputs(model, request, settings.max_score_examples))
            # a stochastic bound (the VAE's) draws its noise per call: batched, a value would depend on its
            # neighbours, so only deterministic scores are batched
            deterministic = Capability.EXACT_LIKELIHOOD in model.capabilities or model.score_name != "nll_nats"
            values = batcher(request.model, served, model)(x) if deterministic else _scores_now(served, model, x)
            rows = [{"index": i, "score": float(s), **({} if bpd != bpd else {"bits_per_dim": float(bpd)})}
                    for i, (s, bpd) in enumerate(values.tolist())]
            return tracked.respond({"id": tracked.id, "object": "list", "model": request.model,
                                    "score_name": model.score_name, "data": rows}, samples=len(rows))

    @app.post("/v1/feedback")
    def feedback(request: FeedbackRequest, key: str | None = Depends(caller)) -> dict[str, Any]:
        if store is None:
            raise APIError(400, "this server keeps no request store, so there is nothing to attach feedback to")
        if not store.set_quality(request.id, request.score):
            raise APIError(404, f"no stored answer has the id '{request.id}'", param="id", code="not_found")
        return {"id": request.id, "score": request.score, "object": "feedback"}

    install_text_routes(app, registry, tracker, caller, settings, [BlockList(settings.block_list)])
    return app


def _sample(registry: ModelRegistry, request: ImageRequest, name: str, n: int, deadline: Deadline) -> torch.Tensor:
    """``n`` images of the served model ``name`` for ``request`` (its seed, class and options), before the deadline."""
    served, model = registry.get(name)
    if model.data.kind is not DataKind.IMAGE:
        raise APIError(400, f"model '{name}' does not make images ({model.data.kind.value} data)", param="model")
    if request.prompt and Capability.GENERATE_TEXT not in model.capabilities:
        raise APIError(400, f"model '{name}' takes no prompt (it samples unconditionally"
                       f"{' or given a class' if model.data.conditional else ''})", param="prompt")
    labels = None if request.label is None else torch.tensor([request.label])
    with served.lock, deadline.watching(model):
        return model.sample(n, seed=request.seed, labels=labels, **request.options)


def _image_cascade(cascade: Cascade, registry: ModelRegistry, request: ImageRequest, deadline: Deadline
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Images of a cascade, escalated one by one: each step redraws (same seed) the images whose confidence is below
    its threshold. Returns the images and the response's ``model``, ``answered_by`` (per image), ``escalations``."""
    images: torch.Tensor | None = None
    answered_by = [""] * request.n
    todo, tried = torch.arange(request.n), []
    for step, threshold in zip(cascade.config.steps, cascade.thresholds(registry), strict=True):
        drawn = _sample(registry, request, step.model, len(todo), deadline)
        images = drawn if images is None else images.index_put((todo,), drawn)
        for i in todo.tolist():
            answered_by[i] = step.model
        if threshold is None:  # the last model keeps what it drew
            tried.append({"model": step.model, "images": len(todo), "escalated": 0})
            break
        served, model = registry.get(step.model)
        with served.lock:
            confidence = image_confidence(step.signal, model, drawn)
        low = confidence < threshold
        tried.append({"model": step.model, "images": len(todo), "signal": step.signal, "values": confidence.tolist(),
                      "threshold": threshold, "escalated": int(low.sum())})
        todo = todo[low]
        if not len(todo):
            break
    assert images is not None  # a cascade has at least two steps and n >= 1
    return images, {"model": cascade.name, "answered_by": answered_by, "escalations": tried}


def _scores_now(served: ServedModel, model: GenerativeModel, x: torch.Tensor) -> torch.Tensor:
    """(N, 2): each example's score and bits/dim (NaN for scores that are not likelihoods), in one model call."""
    with served.lock:
        values, bpd = example_scores(model, x)
    return torch.stack([values, bpd if bpd is not None else torch.full_like(values, float("nan"))], 1)


def _png(image: torch.Tensor) -> bytes:
    """One (C, H, W) image in [0, 1] as PNG bytes."""
    from PIL import Image

    array = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_entry(png: bytes, response_format: str, files: Path) -> dict[str, str]:
    """One image of a response: inline base64, or the URL of a stored copy."""
    if response_format == "b64_json":
        return {"b64_json": base64.b64encode(png).decode()}
    return {"url": f"/v1/files/{_keep(files, png)}"}


def _keep(folder: Path, png: bytes) -> str:
    """Store ``png`` under a random name (written atomically) and return the name."""
    from genzoo.io import atomic_write_bytes

    name = f"{uuid.uuid4().hex}.png"
    atomic_write_bytes(folder / name, png)
    return name


def _score_inputs(model: GenerativeModel, request: ScoreRequest, limit: int) -> torch.Tensor:
    """The examples of a score request as a float tensor; a clear 400 for anything malformed."""
    if (request.input is None) == (request.images is None):
        raise APIError(400, "give the examples as 'input' (arrays in data units) or as 'images' (base64 PNGs)")
    count = len(request.input if request.input is not None else request.images or [])
    if not 1 <= count <= limit:
        raise APIError(400, f"a score request holds 1 to {limit} examples, got {count}",
                       param="input" if request.input is not None else "images")
    if request.images is not None:
        return torch.stack([_decode_image(text, model, f"images[{i}]") for i, text in enumerate(request.images)])
    try:
        x = torch.tensor(request.input, dtype=torch.float32)
    except (ValueError, TypeError) as err:
        raise APIError(400, f"input is not a regular array of numbers ({err})", param="input") from None
    if not torch.isfinite(x).all():
        raise APIError(400, "input holds NaN or infinite values", param="input")
    return x


def _decode_image(text: str, model: GenerativeModel, field: str, mask: bool = False) -> torch.Tensor:
    """A base64 image of a request as (C, H, W) in [0, 1] with the model's channels (a mask: (H, W), 1 = generate)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
        img.load()
    except (ValueError, UnidentifiedImageError, OSError):
        raise APIError(400, f"{field} is not a base64-encoded PNG/JPEG image", param=field.split("[")[0]) from None
    if model.data.kind is not DataKind.IMAGE:
        raise APIError(400, f"model '{model.name}' does not take images ({model.data.kind.value} data)", param=field)
    if mask:
        return torch.from_numpy((np.asarray(img.convert("L")) > 0).astype(np.float32))
    channels = model.data.shape[0]
    array = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array[None] if channels == 1 else array.transpose(2, 0, 1).copy())
