"""The demo page in a real browser: Playwright drives Debian's Chromium (``/usr/bin/chromium``).

Upload (file picker or drag and drop) -> type classes -> Segment -> the overlay and legend
appear, hovering names the pixel's class, the downloads are offered. A screenshot of the
result is kept in ``tests/artifacts/``.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.serve_helpers import FakePredictor, running_server

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini" / "train2017"

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is absent")
pytest.importorskip("fastapi")
if not CHROMIUM.exists():
    pytest.skip(
        f"Chromium is absent at {CHROMIUM} (install it with `apt-get install -y chromium`)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu"],
        )
        yield browser
        browser.close()


def _photo() -> Path:
    if not COCO.is_dir():
        pytest.skip(f"real photos not found at {COCO} (the shared data folder is absent)")
    return sorted(COCO.glob("*.jpg"))[0]


def _predictor(kind: str, request):
    if kind == "fake":
        return FakePredictor()
    import ovseg

    return ovseg.Predictor(request.getfixturevalue("tiny_model"))


@pytest.mark.parametrize("kind, upload", [("fake", "drop"), ("tiny", "picker")])
def test_upload_segment_overlay_legend_hover(browser, kind, upload, request):
    from ovseg.serve import create_app

    photo = _photo()
    classes = ["person", "grass", "sky"]
    app = create_app(_predictor(kind, request), model_name=f"test-{kind}")
    with running_server(app) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        if upload == "picker":
            page.set_input_files("#file", str(photo))
        else:
            data = base64.b64encode(photo.read_bytes()).decode()
            transfer = page.evaluate_handle(
                """(b64) => {
                    const bin = atob(b64), bytes = new Uint8Array(bin.length);
                    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
                    const dt = new DataTransfer();
                    dt.items.add(new File([bytes], "photo.jpg", { type: "image/jpeg" }));
                    return dt;
                }""",
                data,
            )
            page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
        page.fill("#classes", ", ".join(classes))
        page.click("#run")
        page.wait_for_selector("#legend li", timeout=60_000)

        legend = page.locator("#legend li")
        names = [legend.nth(i).get_attribute("data-label") for i in range(legend.count())]
        assert names and set(names) <= set(classes)
        assert "done in" in page.inner_text("#status")

        # the canvas shows photo blended with the class colours at the chosen opacity
        check = page.evaluate(
            """() => {
                const c = document.getElementById("canvas");
                const probe = document.createElement("canvas");
                probe.width = c.width; probe.height = c.height;
                const pctx = probe.getContext("2d");
                pctx.drawImage(photo, 0, 0, c.width, c.height);
                const x = Math.floor(c.width / 3), y = Math.floor(c.height / 2);
                const shown = c.getContext("2d").getImageData(x, y, 1, 1).data;
                const orig = pctx.getImageData(x, y, 1, 1).data;
                const k = labels[y * result.width + x];
                const col = result.colors[k];
                const rgb = [1, 3, 5].map((i) => parseInt(col.slice(i, i + 2), 16));
                const a = parseFloat(document.getElementById("alpha").value);
                const want = [0, 1, 2].map((ch) => (1 - a) * orig[ch] + a * rgb[ch]);
                return {w: c.width, h: c.height, rw: result.width, rh: result.height,
                        err: Math.max(...[0, 1, 2].map((ch) => Math.abs(shown[ch] - want[ch])))};
            }"""
        )
        assert (check["w"], check["h"]) == (check["rw"], check["rh"])
        assert check["err"] <= 2, check

        box = page.locator("#canvas").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 2)
        hover = page.locator("#hover")
        assert hover.is_visible() and hover.inner_text() in classes

        assert page.locator("#downloads").is_visible()
        assert page.get_attribute("#dl-json", "href").startswith("blob:")
        assert page.get_attribute("#dl-overlay", "href").startswith("data:image/png;base64,")
        with page.expect_download() as download_info:
            page.click("#dl-json")
        assert download_info.value.suggested_filename.endswith(".json")

        page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 2)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"browser_demo_{kind}.png"), full_page=True)
        assert not errors, errors
        page.close()
