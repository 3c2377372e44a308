"""End to end in a real headless Chromium (Debian's ``chromium``, driven by Playwright through its executable path).

Nothing is downloaded: ``playwright install`` is never run. Without chromium the file is skipped — except under
``CI`` (set), where a missing browser fails. Screenshots of every step go to the test's ``tmp_path`` and are
copied to ``tests/output/ui/`` for a person to look at.

The tests share one server, one browser page and one attack session, and run in file order: load a tiny poisoned
model, generate adversarial examples, crop a patch by dragging and read the success rate shown, pick a colour by
clicking a pixel, keep a trigger and compare it with the automatic candidates, open a run's report, decide, and
see named errors for bad input.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.test_ui_api import TARGET, make_home, tiny_model_file

CHROMIUM = shutil.which("chromium")
OUTPUT = Path(__file__).parent / "output" / "ui"
VIEWPORT = {"width": 1280, "height": 800}


def _need(what: str, fix: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing and CI is set: {fix}")
    pytest.skip(f"{what} is missing ({fix})", allow_module_level=True)


if CHROMIUM is None:
    _need("Debian's chromium", "run scripts/install-browser.sh")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    _need("the playwright python package", "pip install playwright (no `playwright install` needed)")
pytest.importorskip("fastapi")

from backdoorlab.ui.app import start_server  # noqa: E402

# -- fixtures --------------------------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ui-screens")
    OUTPUT.mkdir(parents=True, exist_ok=True)

    def shot(page, name: str, full_page: bool = False) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        shutil.copy(path, OUTPUT / path.name)
        return path

    return shot


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.set_num_threads(1)
    home = make_home(tmp_path_factory.mktemp("ui-e2e"))
    srv = start_server(home, "127.0.0.1", 0)
    yield srv
    srv.stop()


def call(server, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        server.url.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"X-Backdoorlab": "1", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def victim_id(server) -> str:
    return next(m["id"] for m in call(server, "GET", "/api/models")["models"] if m["role"] == "victim")


@pytest.fixture(scope="module")
def page(server):
    console: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        pg.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: console.append(str(e)))
        pg.goto(server.url)
        pg.wait_for_selector("body[data-ready='1']")
        yield pg
        browser.close()
    # no script error and no Content-Security-Policy violation during the whole session
    assert [m for m in console if "status of 4" not in m] == []


def wait_until(page, expression: str, timeout: float = 30.0) -> None:
    """Poll ``expression`` in the page (``page.wait_for_function`` evaluates strings, which the tool's CSP forbids)."""
    end = time.time() + timeout
    while not page.evaluate(expression):
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {expression}")
        page.wait_for_timeout(100)


def apply_and_wait(page) -> None:
    """Click "Apply" and wait for the new result (not the one already shown)."""
    count = page.evaluate("Number(document.querySelector('#apply-result').dataset.count || 0)")
    page.click("#apply-trigger")
    wait_until(page, f"Number(document.querySelector('#apply-result').dataset.count || 0) > {count}")


def pixel_point(page, selector: str, row: float, col: float, size: int) -> tuple[float, float]:
    box = page.locator(selector).bounding_box()
    return box["x"] + (col + 0.5) * box["width"] / size, box["y"] + (row + 0.5) * box["height"] / size


def decode_png(url: str) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    return torch.from_numpy(np.array(im))


@pytest.fixture(scope="module")
def upload_file(tmp_path_factory) -> Path:
    """The tiny poisoned model with one bias nudged: other weights (another id) than the stored run's."""
    from backdoorlab.models import load_model, save_model

    model, card = load_model(tiny_model_file())
    with torch.no_grad():
        model.fc2.bias.add_(1e-4)
    path = tmp_path_factory.mktemp("ui-upload") / "tiny-upload.safetensors"
    return save_model(model, path, classes=card.classes, extra=card.extra)


# -- the session -----------------------------------------------------------------------------------------------
def test_upload_a_model_and_generate_adversarial_examples(page, server, upload_file, shots):
    page.set_input_files("#upload-file", str(upload_file))
    page.click("#upload-btn")
    page.wait_for_selector("#upload-status:has-text('uploaded: tiny-upload')")
    uploaded = next(m for m in call(server, "GET", "/api/models")["models"] if m["source"] == "upload")
    wait_until(page, f"document.querySelector('#model-select').value === '{uploaded['id']}'")  # selected
    assert "ground truth: poisoned" in page.inner_text("#model-info")
    assert page.input_value("#dataset") == "mnist5k"  # from the model file's header
    assert float(page.input_value("#eps")) == pytest.approx(4.33, abs=0.01)  # paper's ε = 60, scaled
    page.select_option("#method", "basic")
    page.fill("#steps", "10")
    page.fill("#n-images", "6")
    page.fill("#n-eval", "40")
    page.click("#run-attack")
    wait_until(page, "document.querySelectorAll('#adv-grid .adv-card').length === 6")
    assert page.locator("#attack-progress").evaluate("e => e.value") == 1
    caption = page.locator("#adv-grid .adv-card figcaption").first.inner_text()
    assert "clean: label" in caption and "adversarial →" in caption
    width = page.locator("#adv-grid img").first.evaluate("e => e.getBoundingClientRect().width")
    assert width >= 112  # 28 px upscaled, pixelated
    assert (
        page.locator("#adv-grid img").first.evaluate("e => getComputedStyle(e).imageRendering") == "pixelated"
    )
    assert "Basic Adv" in page.inner_text("#attack-summary")
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input, select, textarea')].filter((e) =>
            !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map((e) => e.id || e.name)"""
    )
    assert unlabelled == []  # every control has a label
    shots(page, "1-inspect")


def test_crop_a_patch_by_dragging_apply_it_and_read_the_success_rate(page, server, shots):
    page.click("#tab-btn-trigger")
    target = "#source-grid .pick[data-index='0'] img"
    x0, y0 = pixel_point(page, target, 20, 20, 28)
    x1, y1 = pixel_point(page, target, 23, 23, 28)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=3)
    page.mouse.move(x1, y1, steps=3)
    page.mouse.up()
    assert page.inner_text("#crop-info") == "4×4 box at row 20, col 20 of adversarial example #0"
    assert page.is_checked("input[name='kind'][value='crop']")
    assert page.locator("#source-grid .pick[data-index='0'] .box").is_visible()
    apply_and_wait(page)
    text = page.inner_text("#success-best")
    match = re.fullmatch(r"Success toward class (\d+)(?: \(.*\))?: (\d+\.\d)%", text)
    assert match, text
    shown_class, shown = int(match.group(1)), float(match.group(2))
    # the page shows what the API measures for the same crop
    attack_id = page.evaluate("state.attack.id")
    api = call(
        server,
        "POST",
        "/api/triggers/apply",
        {"attack_id": attack_id, "trigger": {"kind": "crop", "index": 0, "row": 20, "col": 20, "size": 4}},
    )
    assert shown_class == api["result"]["best_class"]
    assert shown == pytest.approx(100 * api["result"]["best_rate"], abs=0.05)
    assert page.locator("#success-table tr").count() == 10
    assert page.locator("#patched-grid img").count() == 8
    shots(page, "2-crop-applied")

    # the paper's finding, by hand: crop the pattern the attack painted where BadNets' trigger was trained
    # (bottom-right 4×4), paste it there on clean images: the model sends them to the backdoor's target
    attack = call(server, "GET", f"/api/attacks/{attack_id}")
    energy = [
        float((decode_png(it["adversarial"]).float() - decode_png(it["clean"]).float())[24:, 24:].abs().sum())
        for it in attack["images"]
    ]
    best = max(range(len(energy)), key=energy.__getitem__)
    target = f"#source-grid .pick[data-index='{best}'] img"
    page.mouse.move(*pixel_point(page, target, 24, 24, 28))
    page.mouse.down()
    page.mouse.move(*pixel_point(page, target, 27, 27, 28), steps=4)
    page.mouse.up()
    assert page.inner_text("#crop-info") == f"4×4 box at row 24, col 24 of adversarial example #{best}"
    page.select_option("#placement", "fixed")
    assert page.input_value("#at-row") == "24" and page.input_value("#at-col") == "24"
    apply_and_wait(page)
    assert "chosen location" in page.inner_text("#success-where")
    assert int(page.get_attribute("#success-best", "data-cls")) == TARGET
    assert float(page.get_attribute("#success-best", "data-rate")) > 0.5
    shots(page, "2b-crop-of-the-backdoor")
    page.select_option("#placement", "random")


def test_pick_a_colour_by_clicking_a_pixel(page, server, shots):
    attack = call(server, "GET", f"/api/attacks/{page.evaluate('state.attack.id')}")
    adv = decode_png(attack["images"][1]["adversarial"])  # 28×28 uint8, what the page shows
    row, col = 14, 13
    x, y = pixel_point(page, "#source-grid .pick[data-index='1'] img", row, col, 28)
    page.mouse.click(x, y)
    v = int(adv[row, col])
    assert page.input_value("#color-1") == f"#{v:02x}{v:02x}{v:02x}"
    assert page.is_checked("input[name='kind'][value='color']")
    assert f"row {row}, col {col}" in page.inner_text("#apply-status")
    # the original trigger, rebuilt with the picker at the place it was trained: the page shows the backdoor
    page.fill("#color-1", "#ffffff")
    page.select_option("#placement", "fixed")
    page.fill("#at-row", "24")
    page.fill("#at-col", "24")
    apply_and_wait(page)
    assert "chosen location" in page.inner_text("#success-where")
    rate = float(page.get_attribute("#success-best", "data-rate"))
    assert int(page.get_attribute("#success-best", "data-cls")) == TARGET and rate > 0.8
    shots(page, "3-colour-trigger")


def test_keep_a_trigger_download_it_and_compare_with_the_candidates(page, server, shots):
    page.fill("#trigger-name", "white corner")
    page.click("#keep-trigger")
    page.wait_for_selector("#kept-table tbody tr")
    assert "white corner" in page.inner_text("#kept-table tbody")
    with page.expect_download() as dl:
        page.locator("#kept-table a.dl", has_text="json").first.click()
    spec = json.loads(Path(dl.value.path()).read_text())
    assert spec["name"] == "white corner" and spec["spec"]["colors"] == ["#ffffff"]
    page.click("#run-candidates")
    wait_until(page, "document.querySelectorAll('#cand-table tbody tr').length > 3", 60)
    assert "your trigger “white corner”" in page.inner_text("#cand-table tbody")
    shots(page, "4-candidates", full_page=True)


def test_open_a_runs_report(page, server, shots):
    page.click("#tab-btn-results")
    page.wait_for_selector("#runs-table a.report-link")
    assert "badnets-tiny" in page.inner_text("#runs-table")
    page.wait_for_selector("#repro-list img")
    page.locator("#repro-list img").first.scroll_into_view_if_needed()  # plots load lazily
    wait_until(page, "document.querySelector('#repro-list img').naturalWidth === 8")
    page.locator("#runs-table button", has_text="Details").first.click()
    page.wait_for_selector("#run-details:not([hidden])")
    assert '"target": 0' in page.inner_text("#run-config")
    shots(page, "5-results")
    with page.expect_popup() as popup:
        page.click("#runs-table a.report-link")
    report = popup.value
    report.wait_for_load_state()
    assert "Run report of badnets-tiny" in report.inner_text("body")
    shots(report, "6-run-report")
    report.close()


def test_decide_and_score_the_study(page, server, victim_id, shots):
    page.click("#tab-btn-decide")
    page.select_option("#decide-model", victim_id)
    page.check("input[name='verdict'][value='poisoned']")
    page.fill("#decide-note", "a white 4×4 patch at the corner sends most images to class 0")
    page.fill("#analyst", "e2e")
    page.click("#save-decision")
    page.wait_for_selector("#decisions-table tbody tr")
    row = page.inner_text("#decisions-table tbody tr")
    assert "poisoned" in row and "✓" in row and "e2e" in row
    page.wait_for_selector("#study-table tbody tr")
    assert "100.0%" in page.inner_text("#study-table tbody")
    stored = call(server, "GET", "/api/decisions")["decisions"]
    assert stored[0]["model_id"] == victim_id and stored[0]["note"].startswith("a white 4×4")
    shots(page, "7-decide")


def test_bad_input_shows_a_named_error_in_the_page(page, server, shots):
    page.click("#tab-btn-inspect")
    page.fill("#steps", "0")
    page.click("#run-attack")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error-text") == "steps: must be at least 1"
    page.click("#error-close")
    page.fill("#steps", "5")
    page.fill("#classes", "12")  # checked by the server
    page.click("#run-attack")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error-text").startswith("classes: 12 is not a class index")
    shots(page, "8-error")
    page.click("#error-close")
    page.fill("#classes", "")
