"""``ovseg serve``: the web service and page, with the model loaded once."""

from __future__ import annotations

from ovseg.cli._common import add_model_args
from ovseg.cli._inference import add_prediction_args
from ovseg.cli._proposals import add_proposal_args
from ovseg.cli._spec import predictor_spec


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="web service (POST /segment) and a page to try the model in a browser",
        description="Serve POST /segment (multipart 'image' + comma-separated 'classes'), "
        "POST /segment-video (a short video, answered with its overlay video), GET /health "
        "and a page at /. Binds 127.0.0.1 unless --host says otherwise. The prediction "
        "options are the server's defaults; a request may set 'mode' and 'granularity'.",
    )
    add_model_args(parser)
    add_proposal_args(parser)
    add_prediction_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--max-pending",
        type=int,
        default=4,
        help="requests admitted at once (running + waiting); more get 429, busy (default 4)",
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=20, help="largest request body in MiB (default 20)"
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=4096 * 4096,
        help="largest image in pixels; bigger ones get 413 (default 4096*4096)",
    )
    parser.add_argument(
        "--max-class-pixels",
        type=int,
        default=500_000_000,
        help="bound on classes x pixels, the size of the score tensor (default 5e8 = 2 GB)",
    )
    parser.add_argument(
        "--max-video-seconds",
        type=float,
        default=10.0,
        help="longest video POST /segment-video and the page accept; it is answered with the "
        "overlay video (default 10; 0 turns videos off)",
    )
    parser.add_argument(
        "--max-classes",
        type=int,
        default=1000,
        help="most class names in one request, repeats merged (default 1000)",
    )
    parser.add_argument(
        "--max-classes-bytes",
        type=int,
        default=64 * 1024,
        help="largest 'classes' field in bytes, refused (413) before it is split (default 65536)",
    )
    parser.add_argument(
        "--upload-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="the whole request body must arrive within S seconds, else 408 (default 60)",
    )
    parser.add_argument(
        "--send-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="a client must take each part of its response within S seconds (default 60)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="a connection must send its request line and headers within S seconds (default 10)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open connections at most; more are answered 503 by the server (default 256)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from ovseg.serve import create_app
    from ovseg.serve.server import server_config

    spec = predictor_spec(args)
    predictor = spec.build()
    app = create_app(
        predictor,
        predict_options=spec.predict_kwargs(),
        random_weights=getattr(predictor.model, "random_weights", False),
        max_pending=args.max_pending,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        max_class_pixels=args.max_class_pixels,
        model_name=spec.model.name,
        max_video_seconds=args.max_video_seconds,
        max_classes=args.max_classes,
        max_classes_bytes=args.max_classes_bytes,
        upload_timeout_s=args.upload_timeout,
        send_timeout_s=args.send_timeout,
    )
    print(f"ovseg serve: open http://{args.host}:{args.port}/ in a browser")
    config = server_config(
        app,
        host=args.host,
        port=args.port,
        header_timeout_s=args.header_timeout,
        max_connections=args.max_connections,
    )
    uvicorn.Server(config).run()
    return 0
