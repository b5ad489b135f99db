"""The whole journey in a real browser, on real data: recommend -> pick an encoder ->
sign in -> upload a dataset -> submit a job -> watch the curve update -> download the
result; each page checked with axe-core, and reachable by keyboard."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect

from tests.conftest import Server
from tests.utils import DATA_DIR, png_bytes

from .conftest import axe_violations

TOKEN = "alice-browser-token-0123456789"
ENCODER = "taskalign/resnet18-2d.simclr-pneumoniamnist"
# Set to a folder (docs/screenshots) to keep a screenshot of each page.
SHOTS = os.environ.get("TASKALIGN_SCREENSHOTS")
SEED_DIR = Path(__file__).resolve().parents[2] / "zoo" / "seed"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    home = tmp_path_factory.mktemp("web")
    srv = Server(home, TASKALIGN_SEED_ZOO="true", TASKALIGN_WORKER="true",
                 TASKALIGN_API_TOKENS=f"alice={TOKEN}")
    seeds = len(list(SEED_DIR.glob("*/card.json")))
    deadline = time.monotonic() + 300  # the seed zoo registers in the background
    while time.monotonic() < deadline:
        listed = httpx.get(f"{srv.url}/v1/encoders", params={"limit": 1}, timeout=10)
        if listed.json()["count"] >= seeds:
            break
        time.sleep(2)
    else:
        srv.stop()
        pytest.fail(f"the {seeds} seed encoders were not registered in 300 s")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pneumonia_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real cut of PneumoniaMNIST, in the layout a user uploads."""
    source = DATA_DIR / "medmnist" / "pneumoniamnist.npz"
    if not source.exists():
        pytest.skip(f"real data not found at {source}")
    out = tmp_path_factory.mktemp("upload") / "pneumonia-small.npz"
    with np.load(source) as data:
        cut = {"train": 320, "val": 96, "test": 96}
        np.savez(out, **{f"{s}_{k}": data[f"{s}_{k}"][:n] for s, n in cut.items()
                         for k in ("images", "labels")})
    return out


def shot(page: object, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"))


def drop_file(page: object, target: str, path: Path) -> None:
    """Drop a file on an element the way a browser does: a drop event carrying it."""
    payload = base64.b64encode(path.read_bytes()).decode()
    page.locator(target).evaluate("""(el, [name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], name));
        el.dispatchEvent(new DragEvent("dragenter", {dataTransfer: data, bubbles: true}));
        el.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
    }""", [path.name, payload])


def accessible(page: object) -> None:
    assert axe_violations(page) == [], page.url


def test_journey(browser: object, server: Server, pneumonia_npz: Path,
                 tmp_path: Path) -> None:
    context = browser.new_context(base_url=server.url, accept_downloads=True,
                                  viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    # Anything the pages' Content-Security-Policy blocks shows up as a console error.
    # (The wizard's 422 and the wrong token's 401 are answers the journey asks for.)
    page.on("console", lambda msg: msg.type == "error" and not re.search(
        r"Failed to load resource: .* status of (401|422)", msg.text) and errors.append(
        msg.text))

    # Home: three steps, each a link.
    page.goto("/")
    assert page.get_by_role("link", name="1. Describe your task").is_visible()
    accessible(page)
    shot(page, "home")
    page.get_by_role("link", name="1. Describe your task").click()

    # Wizard: a typo gets an inline error with a did-you-mean link that fixes it.
    page.get_by_label("task", exact=True).select_option("classification")
    page.get_by_label("modality", exact=True).fill("xrya")
    page.get_by_label("label regime").select_option("low")
    page.get_by_role("button", name="Recommend").click()
    alert = page.locator("#e-modality")
    assert "did you mean 'xray'" in alert.inner_text()
    accessible(page)
    alert.get_by_role("link").click()
    page.wait_for_url("**modality=xray**")
    page.locator("ol.methods > li").first.wait_for()
    assert "modality=xray" in page.url  # the URL carries the profile: shareable
    assert page.locator("ol.methods > li").count() >= 3
    assert page.locator("details.trace").get_attribute("open") is None  # trace collapsed
    assert page.get_by_text("Table 3:").first.is_visible()
    accessible(page)
    shot(page, "recommend")
    shared = page.url
    again = context.new_page()
    again.goto(shared)
    assert again.locator("ol.methods > li").first.inner_text() == \
        page.locator("ol.methods > li").first.inner_text()
    again.close()

    # Pick the encoder from the recommendation's matches: fine-tuning needs sign-in.
    row = page.locator("tr", has=page.get_by_role("link", name=ENCODER, exact=True))
    row.get_by_role("link", name="Fine-tune this").click()
    assert "/sign-in" in page.url
    page.get_by_label("API token").fill("not-a-token-of-anyone-here")
    page.get_by_role("button", name="Sign in").click()
    assert "unknown token" in page.locator(".error").inner_text()
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    assert "/jobs/new" in page.url and "encoder=" in page.url
    assert page.get_by_label("Encoder (fine-tune)").input_value() == ENCODER
    cookie = next(c for c in context.cookies() if c["name"] == "taskalign_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # The zoo page of that encoder: card, chart, files with sha256.
    page.goto(f"/zoo/{ENCODER}")
    page.wait_for_selector("#eval-chart canvas")
    assert page.get_by_role("heading", name="Model card").is_visible()
    accessible(page)
    shot(page, "zoo-encoder")
    page.goto("/zoo?modality=cxr")
    assert page.get_by_role("link", name=ENCODER, exact=True).is_visible()
    shot(page, "zoo")
    # Filters update the results in place (htmx) and the address with them.
    page.evaluate("window.__same_page = true")
    page.get_by_label("Method").select_option("mae")
    page.wait_for_url("**method=mae**")
    page.get_by_role("link", name=ENCODER, exact=True).wait_for(state="detached")
    methods = page.locator("#zoo-results tbody tr td:nth-child(2)").all_inner_texts()
    assert methods and set(methods) == {"mae"}, page.url
    assert page.evaluate("window.__same_page === true")  # no full navigation

    # Upload a real dataset: progress bar, then its page with counts and thumbnails.
    page.goto("/datasets")
    drop_file(page, "#drop", pneumonia_npz)  # dragged in, as a person would
    assert page.get_by_label("Name").input_value() == "pneumonia-small"
    page.get_by_label("Modality").fill("xray")
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url("**/datasets/*")
    assert page.locator("td", has_text="320").count() >= 1  # train images
    thumbs = page.locator("img.thumbs")
    thumbs.wait_for()
    expect(thumbs).to_have_js_property("complete", True)
    assert thumbs.evaluate("img => img.naturalWidth") > 0
    accessible(page)
    shot(page, "dataset")

    # Submit a fine-tune from the dataset's page, with the encoder chosen above.
    page.get_by_role("link", name="Fine-tune on it").click()
    page.get_by_label("Encoder (fine-tune)").fill(ENCODER)
    page.locator("summary", has_text="Settings").click()
    page.get_by_label("Mode (fine-tune)").fill("full")
    page.get_by_label("Epochs").fill("6")
    page.get_by_label("Device").fill("cpu")
    accessible(page)
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url("**/jobs/*")

    # Live: the curve gains points from the event stream while the page is open.
    # (The pages' policy forbids eval, so waits are locator assertions, not predicates.)
    expect(page.locator("#curves")).to_have_attribute("data-live", re.compile(r"^([2-9]|\d\d+)$"),
                                                      timeout=180_000)
    shot(page, "job-running")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=180_000)
    expect(page.locator("#job-where")).to_contain_text("on cpu, attempt 1 of")  # live too
    result = page.locator("#job-result a")
    result.wait_for()
    assert page.locator("#job-log").inner_text().count("epoch") >= 6
    accessible(page)
    shot(page, "job")

    # The resulting model: download its weights and check them against the listed sha256.
    result.click()
    page.wait_for_url("**/zoo/alice/**")
    row = page.locator("tr", has=page.get_by_role("link", name="model.safetensors"))
    expected = row.locator("code.hash").inner_text().strip()
    with page.expect_download() as download:
        row.get_by_role("link", name="model.safetensors").click()
    data = Path(download.value.path()).read_bytes()
    assert hashlib.sha256(data).hexdigest() == expected
    # ... and use it: three real test images through /predict.
    with np.load(pneumonia_npz) as cut:
        images = cut["test_images"][:3]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"case{i}.png")
        paths[-1].write_bytes(png_bytes(image))
    page.set_input_files("#p-images", [str(p) for p in paths])
    page.get_by_role("button", name="Predict").click()
    answers = page.locator("#predict-result tbody tr")
    answers.first.wait_for()
    assert answers.count() == 3 and "case0.png" in answers.first.inner_text()
    accessible(page)
    shot(page, "task-model")
    page.goto("/jobs")
    assert page.locator("span.status.s-succeeded").count() == 1
    accessible(page)
    shot(page, "jobs")
    assert errors == []
    context.close()


def test_docs_render_with_no_outside_request(browser: object, server: Server) -> None:
    context = browser.new_context(base_url=server.url)
    outside: list[str] = []

    def only_local(route: object) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.goto("/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=60_000)
    assert "TaskAlign" in page.locator(".swagger-ui .info .title").inner_text()
    page.goto("/redoc")
    page.get_by_role("heading", name="TaskAlign").first.wait_for(timeout=60_000)
    assert outside == []
    context.close()


def test_keyboard_only(browser: object, server: Server) -> None:
    page = browser.new_page(base_url=server.url)
    page.goto("/recommend")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    reached = []
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || "
                                     "document.activeElement.textContent.trim()"))
    assert "f-task" in reached and "f-modality" in reached and "Recommend" in reached
    page.focus("#f-task")
    page.keyboard.type("seg")  # a select picks its option by typing
    page.focus("#f-label_regime")
    page.keyboard.type("few")
    page.focus("#f-modality")
    page.keyboard.type("ct")
    page.keyboard.press("Enter")
    page.wait_for_url("**task=segmentation**")
    page.locator("ol.methods > li").first.wait_for()
    assert page.url.endswith("/recommend?task=segmentation&modality=ct&label_regime=few_shot")
    assert page.locator("ol.methods > li").count() >= 3
    page.close()
