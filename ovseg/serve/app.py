"""The web service: ``POST /segment``, ``POST /segment-video``, ``GET /health`` and the
single page at ``/``.

``create_app(predictor)`` takes a ready predictor (anything with ``set_image(HxWx3 uint8)``
and ``predict(class_names, **options) -> Segmentation``, e.g. ``ovseg.Predictor``), so the
model is loaded once, by the caller. A video (``POST /segment-video``, at most
``max_video_seconds`` long) is segmented frame by frame (``ovseg.inference.video``) and
answered with the overlay video (MP4). The service stays responsive under hostile input:

- a request counts as pending from the moment it is accepted, before its body is read; at
  most ``max_pending`` are admitted (uploading, waiting or running) and the rest are answered
  429 at once (with ``Retry-After``), so memory stays bounded however many clients connect;
  busy is a 4xx because a 5xx means a bug in ovseg;
- the body is refused past ``max_upload_bytes`` (``limits.BodySizeLimit``; at once when
  ``Content-Length`` says so) and must arrive within ``upload_timeout_s`` (else 408); the
  response must be taken within ``send_timeout_s`` (``limits.SendTimeout``); the request
  headers within ``ovseg.serve.server``'s deadline;
- the form is parsed with a limit for each field (``classes`` at most ``max_classes_bytes``),
  the vocabulary read and an image decoded in a small pool of threads, never on the event
  loop, all in linear time (``forms``, ``ovseg.vocabulary``, ``images``), so ``GET /health``
  answers at once whatever the other requests hold;
- the model runs in one worker thread with one predictor (a ``Predictor`` is a one-thread
  object);
- every input error is a 4xx naming the problem (what the predictor refuses, a
  ``ValueError``, is 400); any other exception is a bug in ovseg: 500, details in the log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ovseg.serve.forms import parse_segment_form, read_body
from ovseg.serve.images import ImageRejected, decode_image
from ovseg.serve.limits import BodySizeLimit, RequestRejected, SendTimeout
from ovseg.vocabulary import VocabularyError, parse_vocabulary

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_CLASSES = 1000
DEFAULT_MAX_CLASSES_BYTES = 64 * 1024  # 1000 names of 60 characters and their separators
# the scores are (classes, H, W) float32 at the image size: 5e8 class-pixels is 2 GB
DEFAULT_MAX_CLASS_PIXELS = 500_000_000
DEFAULT_MAX_VIDEO_SECONDS = 10.0
DEFAULT_UPLOAD_TIMEOUT_S = 60.0
DEFAULT_SEND_TIMEOUT_S = 60.0
PARSE_THREADS = 2

log = logging.getLogger("ovseg.serve")


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
    max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
    max_classes_bytes: int = DEFAULT_MAX_CLASSES_BYTES,
    upload_timeout_s: float = DEFAULT_UPLOAD_TIMEOUT_S,
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
):
    """Build the FastAPI app around a ready ``predictor``.

    Args:
        predictor: has ``set_image(image)`` (HxWx3 uint8 RGB) and ``predict(class_names)``
            returning an ``ovseg.Segmentation``; only ever called from one thread.
        max_pending: requests admitted at once, counted from acceptance (uploading, waiting
            or running); more get 429 (busy, ``Retry-After: 1``).
        max_upload_bytes: request bodies larger than this get 413.
        max_pixels: images with more pixels get 413 (decompression bombs included).
        max_classes: vocabularies longer than this (after merging repeats) get 400.
        max_class_pixels: bound on classes x pixels (the size of the score tensor); images
            over ``max_class_pixels // len(classes)`` pixels get 413.
        model_name: reported by ``GET /health`` and shown on the page.
        predict_options: keyword arguments of every ``predict`` call (e.g. ``mode``,
            ``ensemble_weight``); a request's form fields ``mode`` ("demo" or "eval") and
            ``granularity`` (in [0, 1], demo mode) override them.
        random_weights: the model has random weights (``ovseg-test-tiny``): ``/health`` says
            so and the page shows a warning.
        max_video_seconds: longest video ``POST /segment-video`` accepts (longer: 413); 0
            turns video off.
        max_classes_bytes: a ``classes`` field larger than this gets 413, before it is split.
        upload_timeout_s: the whole body must arrive within this time; else 408.
        send_timeout_s: a client must take each part of its response within this time;
            else the connection is closed.
    """
    from ovseg.modeling.classify import check_vocabulary
    from ovseg.modeling.fusion import MODES

    defaults = dict(predict_options or {})
    # the mode of a request without one: the server's default, else the model config's
    model_mode = getattr(getattr(getattr(predictor, "model", None), "config", None), "mode", None)
    if max_pending < 1:
        raise ValueError(f"max_pending must be >= 1, got {max_pending}")
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovseg-model")
    parsers = ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="ovseg-parse")
    state = {"pending": 0, "served": 0, "refused": 0}

    @asynccontextmanager
    async def lifespan(app):
        yield
        executor.shutdown(wait=True, cancel_futures=True)
        parsers.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="ovseg", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodySizeLimit, max_bytes=max_upload_bytes)
    app.add_middleware(SendTimeout, timeout_s=send_timeout_s)

    def error(status: int, message: str, **headers) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    def busy() -> JSONResponse:
        return error(
            429,
            f"busy: {max_pending} requests are already in progress; try again shortly",
            **{"Retry-After": "1"},
        )

    def request_options(form) -> dict:
        """The server's predict options with the form's ``mode`` and ``granularity``."""
        options = dict(defaults)
        mode = form.mode
        if mode:
            if mode not in MODES:
                raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)} (field 'mode')")
            options["mode"] = str(mode)
        granularity = form.granularity
        if granularity:
            try:
                value = float(str(granularity))
            except ValueError:
                value = -1.0
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"granularity must be a number in [0, 1], got {granularity!r} (field "
                    "'granularity')"
                )
            options["granularity"] = value
        return options

    def read_form(body: bytes, content_type: str, field: str):
        """Form -> (form, class names, predict options, notices); in the parse threads."""
        form = parse_segment_form(body, content_type, max_classes_bytes, field)
        if form.file is None:
            raise RequestRejected(400, f"missing the multipart file field '{field}'")
        try:
            vocabulary = parse_vocabulary(form.classes)
        except VocabularyError as exc:
            raise RequestRejected(400, f"{exc} (field 'classes', comma-separated)") from None
        try:
            options = request_options(form)
        except ValueError as exc:
            raise RequestRejected(400, str(exc)) from None
        names = vocabulary.names
        if len(names) > max_classes:
            raise RequestRejected(
                400, f"{len(names)} classes given; this server accepts at most {max_classes}"
            )
        try:  # the model's own rule, before the model ('others' alone in demo mode)
            check_vocabulary(names, options.get("mode", model_mode))
        except VocabularyError as exc:
            raise RequestRejected(400, f"{exc} (field 'classes')") from None
        return form, names, options, [vocabulary.notice] if vocabulary.notice else []

    def decode(data: bytes, class_names: list[str]):
        """The upload as an (H, W, 3) image, within the pixel bounds; in the parse threads."""
        per_class = max_class_pixels // len(class_names)
        if per_class < max_pixels:
            why = f"for {len(class_names)} classes (at most {max_class_pixels} class-pixels)"
            return decode_image(data, per_class, why)
        return decode_image(data, max_pixels)

    def run_model(image, class_names: list[str], options: dict, notices: list[str]) -> dict:
        start = time.perf_counter()
        predictor.set_image(image)
        seg = predictor.predict(class_names, **options)
        body = _segment_response(seg, image, time.perf_counter() - start)
        if notices:
            body["notices"] = notices
        return body

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
            "refused": state["refused"],
            "max_upload_bytes": max_upload_bytes,
            "max_pixels": max_pixels,
            "max_classes": max_classes,
            "max_classes_bytes": max_classes_bytes,
            "max_class_pixels": max_class_pixels,
            "upload_timeout_s": upload_timeout_s,
            "send_timeout_s": send_timeout_s,
            "max_video_seconds": max_video_seconds,
            "granularity": defaults.get("granularity"),
        }

    async def handle(request: Request, field: str, work) -> Response:
        """One request of ``/segment`` or ``/segment-video``: admission (pending from here),
        the body within its deadline, the form (file ``field``, ``classes``, ``mode``,
        ``granularity``) read in the parse threads, then ``work(form, class_names, options,
        notices)`` twice: ``prepare`` in the parse threads, ``run`` on the model thread."""
        if state["pending"] >= max_pending:  # refuse without keeping the upload
            state["refused"] += 1
            with contextlib.suppress(RequestRejected):  # drained: the client reads the 429
                await read_body(request.receive, max_upload_bytes, upload_timeout_s, keep=False)
            return busy()
        state["pending"] += 1
        loop = asyncio.get_running_loop()
        try:
            body = await read_body(request.receive, max_upload_bytes, upload_timeout_s)
            content_type = request.headers.get("content-type", "")
            form, names, options, notices = await loop.run_in_executor(
                parsers, read_form, body, content_type, field
            )
            del body
            prepared = await loop.run_in_executor(parsers, work.prepare, form, names)
            response = await loop.run_in_executor(
                executor, work.run, prepared, form, names, options, notices
            )
        except (RequestRejected, ImageRejected) as exc:
            state["refused"] += 1
            return error(exc.status, str(exc))
        except ValueError as exc:  # what the predictor refuses (granularity in eval), a video
            state["refused"] += 1
            return error(400, str(exc))
        except Exception:  # a bug in ovseg: say so, keep the details in the log
            log.exception("POST %s failed", request.url.path)
            return error(500, "internal error in ovseg (a bug; the server log has details)")
        finally:
            state["pending"] -= 1
        state["served"] += 1
        return response

    class ImageWork:
        @staticmethod
        def prepare(form, names):
            return decode(form.file, names)

        @staticmethod
        def run(image, form, names, options, notices):
            return JSONResponse(run_model(image, names, options, notices))

    @app.post("/segment")
    async def segment(request: Request):
        return await handle(request, "image", ImageWork)

    def run_video(
        data: bytes, suffix: str, name: str, class_names: list[str], options: dict
    ) -> Response:
        import tempfile
        from pathlib import Path

        from ovseg.inference.video import VideoError, probe_video, segment_video

        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="ovseg-video-") as tmp:
            source = Path(tmp) / f"upload{suffix}"
            source.write_bytes(data)
            try:
                info = probe_video(source)
                if info.seconds is not None and info.seconds > max_video_seconds:
                    raise ImageRejected(
                        413,
                        f"the video is {info.seconds:.1f} s long; this server accepts at most "
                        f"{max_video_seconds:g} s (ovseg serve --max-video-seconds)",
                    )
                limit = min(max_pixels, max_class_pixels // len(class_names))
                if info.width * info.height > limit:
                    raise ImageRejected(
                        413, f"video frames of {info.width}x{info.height} exceed {limit} pixels"
                    )
                result = segment_video(
                    predictor, source, Path(tmp) / "out", "video", class_names, options, {}
                )
            except VideoError as exc:  # name the upload, not the server's temporary file
                raise VideoError(str(exc).replace(str(source), name)) from None
            overlay = (Path(tmp) / "out" / "video_overlay.mp4").read_bytes()
        headers = {
            "X-Frames": str(result["overlay_frames"]),
            "X-Elapsed-S": f"{time.perf_counter() - start:.3f}",
        }
        return Response(overlay, media_type="video/mp4", headers=headers)

    @app.post("/segment-video")
    async def segment_video_request(request: Request):
        from ovseg.inference.jobs import VIDEO_SUFFIXES

        if max_video_seconds <= 0:
            return error(404, "this server does not take videos (--max-video-seconds 0)")

        class VideoWork:
            @staticmethod
            def prepare(form, names):
                return form.file

            @staticmethod
            def run(data, form, names, options, notices):
                suffix = "." + (form.filename or "").rsplit(".", 1)[-1].lower()
                suffix = suffix if suffix in VIDEO_SUFFIXES else ".mp4"  # the content decides
                options.pop("save_proposals", None)  # the answer is the overlay video alone
                name = form.filename or f"upload{suffix}"
                return run_video(data, suffix, name, names, options)

        return await handle(request, "video", VideoWork)

    return app
