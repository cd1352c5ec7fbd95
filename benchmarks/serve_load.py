"""Load test of ``ovseg serve`` under a mixed stream of good and hostile requests.

Starts ``ovseg serve`` (default: the tiny model, its text cache in a fresh ``OVSEG_HOME``
bounded by ``--text-cache-max-mb``) as a separate process, then for ``--duration`` seconds
``--clients`` threads send requests drawn from a fixed mix:

- good: a 480 x 640 photo-like image with a small vocabulary, a new vocabulary (text-cache
  churn), a 1 x 3000 strip, repeats that differ in case;
- hostile: a 1 MB ``classes`` field, a slow upload (trickled until the server's upload
  deadline), a truncated PNG, a decompression-bomb header, a malformed multipart body,
  ``others`` alone in demo mode, an unknown field.

Meanwhile ``GET /health`` is asked every 0.2 s and the server's RSS read every second. It
prints (and writes with ``--json``) per-kind counts of status codes and p50/p99 latency, the
good requests' p50/p99, ``/health`` p50/p99/max, RSS at start, its maximum and at the end,
the RSS slope over the second half (flat memory: near 0), any 5xx, and the text-cache folder
size against its bound. Exit status 1 when a 5xx was seen or the text cache passed its bound.

    python benchmarks/serve_load.py --duration 180 --json benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _photo(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (h + w)], axis=-1)
    return _png((base + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8))


def _bomb() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))


PHOTO = _photo(480, 640, 0)
STRIP = _photo(1, 3000, 1)
TRUNCATED = PHOTO[: len(PHOTO) // 3]
BOMB = _bomb()
BIG_CLASSES = ", ".join(f"c{i}" for i in range(150_000))  # about 1 MB


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "ovsegload"
    out = b""
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for name, (filename, data) in files.items():
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _request(host: str, port: int, body: bytes, content_type: str, timeout: float = 120):
    """POST /segment over a plain socket; (status, seconds)."""
    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        head = (
            f"POST /segment HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            sock.sendall(head + body)
        except OSError:
            pass  # the server answered (413) and closed before the whole body was sent
        status = _read_status(sock)
    return status, time.perf_counter() - start


def _read_status(sock) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return 0  # closed without an answer
        data += chunk
    status = int(data.split(b" ", 2)[1])
    while sock.recv(65536):  # drain the body
        pass
    return status


def _slow_upload(host: str, port: int, seconds: float):
    body, content_type = _multipart({"classes": "sky"}, {"image": ("a.png", PHOTO)})
    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=seconds + 60) as sock:
        sock.sendall(
            (
                f"POST /segment HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        sent = 0
        try:
            while sent < len(body) and time.perf_counter() - start < seconds:
                sock.sendall(body[sent : sent + 20])
                sent += 20
                time.sleep(0.2)
        except OSError:
            pass
        status = _read_status(sock)
    return status, time.perf_counter() - start


def _kinds(rng: random.Random, counter: list[int]):
    """(kind, body, content type) or ("slow", None, None)."""
    i = counter[0] = counter[0] + 1
    choices = [
        ("good", 30),
        ("new-vocabulary", 15),
        ("strip-1x3000", 5),
        ("case-repeats", 5),
        ("1MB-classes", 8),
        ("slow-upload", 4),
        ("truncated", 5),
        ("bomb", 5),
        ("malformed", 5),
        ("others-alone", 5),
        ("unknown-field", 5),
    ]
    kind = rng.choices([c for c, _ in choices], [w for _, w in choices])[0]
    photo = {"image": ("p.png", PHOTO)}
    if kind == "good":
        return kind, *_multipart({"classes": "sky, building, tree, person"}, photo)
    if kind == "new-vocabulary":
        names = ", ".join(f"thing{i}x{k}" for k in range(8))
        return kind, *_multipart({"classes": names}, photo)
    if kind == "strip-1x3000":
        return kind, *_multipart({"classes": "sky, road"}, {"image": ("s.png", STRIP)})
    if kind == "case-repeats":
        return kind, *_multipart({"classes": "sky, Sky, SKY, tree"}, photo)
    if kind == "1MB-classes":
        return kind, *_multipart({"classes": BIG_CLASSES}, photo)
    if kind == "slow-upload":
        return kind, None, None
    if kind == "truncated":
        return kind, *_multipart({"classes": "sky"}, {"image": ("t.png", TRUNCATED)})
    if kind == "bomb":
        return kind, *_multipart({"classes": "sky"}, {"image": ("b.png", BOMB)})
    if kind == "malformed":
        return kind, b"--ovsegload\r\nnot a header\r\n\r\n" * 50, "multipart/form-data; boundary=x"
    if kind == "others-alone":
        return kind, *_multipart({"classes": "others", "mode": "demo"}, photo)
    return kind, *_multipart({"classes": "sky", "evil": "1"}, photo)


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds (default 180)")
    parser.add_argument("--clients", type=int, default=6, help="client threads (default 6)")
    parser.add_argument("--model", default="ovseg-test-tiny")
    parser.add_argument("--text-cache-max-mb", type=float, default=1.0)
    parser.add_argument("--upload-timeout", type=float, default=5.0)
    parser.add_argument("--max-pending", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="ovseg-serve-load-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OVSEG_HOME": str(home), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ovseg", "serve", "--model", args.model, "--port", str(port)]
    cmd += ["--text-cache-max-mb", str(args.text_cache_max_mb)]
    cmd += ["--upload-timeout", str(args.upload_timeout), "--max-pending", str(args.max_pending)]
    log = open(home / "server.log", "wb")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    host = "127.0.0.1"
    try:
        return _run(args, server, host, port, home)
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def _run(args, server, host: str, port: int, home: Path) -> int:
    import urllib.request

    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5).read()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                print((home / "server.log").read_text()[-3000:], file=sys.stderr)
                raise SystemExit("the server did not start") from None
            time.sleep(0.5)
    results: dict[str, list[tuple[int, float]]] = defaultdict(list)
    health: list[float] = []
    rss: list[tuple[float, float]] = []
    stop = threading.Event()
    start = time.monotonic()
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng, counter = random.Random(seed), [seed * 1_000_000]
        while not stop.is_set():
            kind, body, content_type = _kinds(rng, counter)
            try:
                if kind == "slow-upload":
                    status, took = _slow_upload(host, port, args.upload_timeout + 3)
                else:
                    status, took = _request(host, port, body, content_type)
            except OSError as error:
                status, took = -1, 0.0
                print(f"{kind}: {error}", file=sys.stderr)
            with lock:
                results[kind].append((status, took))

    def probe() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                urllib.request.urlopen(f"http://{host}:{port}/health", timeout=30).read()
                health.append(time.perf_counter() - t0)
            except OSError:
                health.append(float("inf"))
            time.sleep(0.2)

    def memory() -> None:
        while not stop.is_set():
            rss.append((time.monotonic() - start, _rss_mb(server.pid)))
            time.sleep(1.0)

    threads = [threading.Thread(target=client, args=(args.seed + i,)) for i in range(args.clients)]
    threads += [threading.Thread(target=probe), threading.Thread(target=memory)]
    for t in threads:
        t.start()
    time.sleep(args.duration)
    stop.set()
    for t in threads:
        t.join(120)

    summary = _summary(args, results, health, rss, home)
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if summary["server_errors_5xx"] or not summary["text_cache"]["within_bound"] else 0


def _summary(args, results, health, rss, home: Path) -> dict:
    per_kind = {}
    for kind, items in sorted(results.items()):
        statuses = defaultdict(int)
        for status, _ in items:
            statuses[str(status)] += 1
        latencies = [t for _, t in items]
        per_kind[kind] = {
            "requests": len(items),
            "status": dict(statuses),
            "p50_s": _percentile(latencies, 50),
            "p99_s": _percentile(latencies, 99),
        }
    good_kinds = ("good", "new-vocabulary", "strip-1x3000", "case-repeats")
    good = [t for k in good_kinds for s, t in results.get(k, []) if s == 200]
    fives = sum(1 for items in results.values() for s, _ in items if 500 <= s < 600)
    half = [m for t, m in rss if t >= args.duration / 2]
    slope = None
    if len(half) > 2:
        times = [t for t, _ in rss if t >= args.duration / 2]
        slope = float(np.polyfit(times, half, 1)[0]) * 60  # MB per minute
    folder = home / "text-features"
    used = sum(p.stat().st_blocks * 512 for p in folder.iterdir()) if folder.is_dir() else 0
    bound = int(args.text_cache_max_mb * 2**20)
    finite = [h for h in health if h != float("inf")]
    return {
        "duration_s": args.duration,
        "clients": args.clients,
        "model": args.model,
        "requests": sum(len(v) for v in results.values()),
        "per_kind": per_kind,
        "good_200": {
            "requests": len(good),
            "p50_s": _percentile(good, 50),
            "p99_s": _percentile(good, 99),
        },
        "busy_429": sum(1 for items in results.values() for s, _ in items if s == 429),
        "server_errors_5xx": fives,
        "health": {
            "probes": len(health),
            "failed": len(health) - len(finite),
            "p50_s": _percentile(finite, 50),
            "p99_s": _percentile(finite, 99),
            "max_s": max(finite) if finite else None,
        },
        "rss_mb": {
            "start": rss[0][1] if rss else None,
            "max": max(m for _, m in rss) if rss else None,
            "end": rss[-1][1] if rss else None,
            "second_half_slope_mb_per_min": slope,
        },
        "text_cache": {"bytes": used, "bound": bound, "within_bound": used <= bound},
        "load_average": os.getloadavg(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
