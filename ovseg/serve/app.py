"""The web service: ``POST /segment``, ``GET /health`` and the single page at ``/``.

``create_app(predictor)`` takes a ready predictor (anything with ``set_image(HxWx3 uint8)``
and ``predict(class_names, **options) -> Segmentation``, e.g. ``ovseg.Predictor``), so the model is
loaded once, by the caller. The model runs in one worker thread; at most ``max_pending``
requests are admitted (running or waiting) and the rest are answered 503 at once, so memory
stays bounded however many clients connect.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ovseg.serve.images import ImageRejected, decode_image
from ovseg.serve.limits import BodySizeLimit
from ovseg.vocabulary import parse_class_names

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_CLASSES = 1000
# the scores are (classes, H, W) float32 at the image size: 5e8 class-pixels is 2 GB
DEFAULT_MAX_CLASS_PIXELS = 500_000_000


def _png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _segment_response(seg, image, elapsed_s: float) -> dict:
    """The JSON body of ``POST /segment``: ``Segmentation.to_json()`` plus the class colours,
    the overlay with its legend and the label map, both as base64 PNG."""
    from ovseg.inference.visualize import palette

    body = seg.to_json()
    colours = palette(max(len(seg.class_names), 1))[: len(seg.class_names)]
    body["colors"] = ["#" + bytes(c).hex() for c in colours.tolist()]
    body["overlay_png"] = _png_base64(seg.overlay(image))
    body["label_map_png"] = _png_base64(seg.label_image())
    body["elapsed_s"] = round(elapsed_s, 4)
    return body


def create_app(
    predictor,
    *,
    max_pending: int = 4,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_classes: int = DEFAULT_MAX_CLASSES,
    max_class_pixels: int = DEFAULT_MAX_CLASS_PIXELS,
    model_name: str = "ovseg",
    predict_options: dict | None = None,
    random_weights: bool = False,
):
    """Build the FastAPI app around a ready ``predictor``.

    Args:
        predictor: has ``set_image(image)`` (HxWx3 uint8 RGB) and ``predict(class_names)``
            returning an ``ovseg.Segmentation``; only ever called from one thread.
        max_pending: requests admitted at once (1 running + the rest waiting); more get 503.
        max_upload_bytes: request bodies larger than this get 413.
        max_pixels: images with more pixels get 413 (decompression bombs included).
        max_classes: vocabularies longer than this get 400.
        max_class_pixels: bound on classes x pixels (the size of the score tensor); images
            over ``max_class_pixels // len(classes)`` pixels get 413.
        model_name: reported by ``GET /health`` and shown on the page.
        predict_options: keyword arguments of every ``predict`` call (e.g. ``mode``,
            ``ensemble_weight``); a request's form field ``mode`` ("demo" or "eval")
            overrides the mode.
        random_weights: the model has random weights (``ovseg-test-tiny``): ``/health`` says
            so and the page shows a warning.
    """
    from ovseg.modeling.fusion import MODES

    defaults = dict(predict_options or {})
    if max_pending < 1:
        raise ValueError(f"max_pending must be >= 1, got {max_pending}")
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovseg-model")
    state = {"pending": 0, "served": 0}

    @asynccontextmanager
    async def lifespan(app):
        yield
        executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="ovseg", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodySizeLimit, max_bytes=max_upload_bytes)

    def error(status: int, message: str, **headers) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    def busy() -> JSONResponse:
        return error(
            503,
            f"busy: {max_pending} requests are already queued; try again shortly",
            **{"Retry-After": "1"},
        )

    def run_model(data: bytes, class_names: list[str], options: dict) -> dict:
        start = time.perf_counter()
        per_class = max_class_pixels // len(class_names)
        if per_class < max_pixels:
            why = f"for {len(class_names)} classes (at most {max_class_pixels} class-pixels)"
            image = decode_image(data, per_class, why)
        else:
            image = decode_image(data, max_pixels)
        predictor.set_image(image)
        seg = predictor.predict(class_names, **options)
        return _segment_response(seg, image, time.perf_counter() - start)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files("ovseg.serve").joinpath("static/index.html").read_text("utf-8")
        return HTMLResponse(html)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": model_name,
            "mode": defaults.get("mode", "the model config's"),
            "modes": list(MODES),
            "random_weights": bool(random_weights),
            "pending": state["pending"],
            "max_pending": max_pending,
            "served": state["served"],
            "max_upload_bytes": max_upload_bytes,
            "max_pixels": max_pixels,
            "max_classes": max_classes,
            "max_class_pixels": max_class_pixels,
        }

    @app.post("/segment")
    async def segment(request: Request):
        if state["pending"] >= max_pending:  # refuse before reading the upload
            return busy()
        try:
            form = await request.form(max_files=1, max_fields=8)
        except StarletteHTTPException as exc:  # malformed multipart body
            return error(exc.status_code, f"expected a multipart/form-data body: {exc.detail}")
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            return error(400, "missing the multipart file field 'image'")
        try:
            class_names = parse_class_names(str(form.get("classes") or ""))
        except ValueError as exc:
            return error(400, f"{exc} (field 'classes', comma-separated)")
        options = dict(defaults)
        mode = form.get("mode")
        if mode:
            if mode not in MODES:
                return error(400, f"mode {mode!r} is not one of {', '.join(MODES)} (field 'mode')")
            options["mode"] = str(mode)
        if len(class_names) > max_classes:
            return error(
                400, f"{len(class_names)} classes given; this server accepts at most {max_classes}"
            )
        if state["pending"] >= max_pending:
            return busy()
        state["pending"] += 1
        try:
            data = await upload.read()
            future = executor.submit(run_model, data, class_names, options)
            body = await asyncio.wrap_future(future)
        except ImageRejected as exc:
            return error(exc.status, str(exc))
        finally:
            state["pending"] -= 1
            await form.close()
        state["served"] += 1
        return JSONResponse(body)

    return app
