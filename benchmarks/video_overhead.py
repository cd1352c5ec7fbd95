"""What the video path costs besides the model, per frame (``ovseg.inference.video``).

Makes a video of a real photo with a moving square (PyAV), then times, per frame and in one
run: decoding (``read_frames``), the model (``set_image`` + ``predict``, ovseg-test-tiny), the
label PNG and the JSON line, the overlay with its legend, and the H.264 encoding. Prints the
milliseconds of each and its ratio to the model's time in the same run (the host is shared,
so ratios are the figures to compare).

    PYTHONPATH=. python benchmarks/video_overhead.py --size 1280x720 --frames 12
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the video")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--photo", default="../shared/data/coco-mini/train2017/000000000790.jpg")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    import av
    from PIL import Image

    import ovseg
    from ovseg.inference.video import read_frames
    from ovseg.inference.video_io import OverlayWriter
    from ovseg.inference.visualize import overlay_image

    photo = np.array(Image.open(args.photo).convert("RGB").resize((width, height)))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "clip.mp4"
        container = av.open(str(source), "w")
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(args.frames):
            frame = photo.copy()
            frame[20:80, 10 * i : 10 * i + 60] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        container.close()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predictor = ovseg.Predictor(ovseg.build_model("ovseg-test-tiny"))
        names = ["person", "table", "wall", "food", "plant"]
        times = {k: 0.0 for k in ("decode", "model", "png+json", "overlay", "encode")}
        writer = OverlayWriter(Path(tmp) / "overlay.mp4", width, height, stream.rate)
        frames = read_frames(source)
        for i in range(args.frames + 1):
            t0 = time.perf_counter()
            frame = next(frames, None)
            times["decode"] += time.perf_counter() - t0
            if frame is None:
                break
            t0 = time.perf_counter()
            predictor.set_image(frame.rgb)
            seg = predictor.predict(names, mode="demo")
            t1 = time.perf_counter()
            seg.label_image().save(io.BytesIO(), format="PNG")
            json.dumps({**seg.to_json(), "frame": frame.index, "time": frame.time})
            t2 = time.perf_counter()
            overlay = np.asarray(overlay_image(frame.rgb, seg.label_map, names, legend="inset"))
            t3 = time.perf_counter()
            writer.write(overlay)
            t4 = time.perf_counter()
            if i == 0:
                continue  # the first frame computes the text features
            times["model"] += t1 - t0
            times["png+json"] += t2 - t1
            times["overlay"] += t3 - t2
            times["encode"] += t4 - t3
        t0 = time.perf_counter()
        writer.close()
        times["encode"] += time.perf_counter() - t0
    n = args.frames - 1
    model = times["model"] / n
    print(f"{width}x{height}, {args.frames} frames (first one left out), ms per frame:")
    for key, total in times.items():
        ms = 1000 * total / (n if key != "decode" else args.frames)
        print(f"  {key:9s} {ms:8.1f} ms   {ms / (1000 * model):6.3f} x model")


if __name__ == "__main__":
    main()
