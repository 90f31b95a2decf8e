"""The demo page in a real browser: headless Chromium driven by Playwright, against `captioning serve`.

Uploads an image, waits for the caption, hovers words and checks that the heat map on the canvas changes, plays the
animation, uploads a broken file and checks the error shown, and saves a screenshot in the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import broken_images
from tests.test_serve import post_image, running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = [
        name
        for name, found in (("Playwright (pip install playwright)", sync_playwright is not None),
                            ("Chromium (apt-get install chromium)", Path(CHROMIUM).exists()))
        if not found
    ]  # fmt: skip
    if missing:
        reason = f"the demo page's browser test needs {' and '.join(missing)}"
        if os.environ.get("CI"):  # CI installs both: there, a missing browser is a broken setup, not a skip
            pytest.fail(f"{reason}; CI is set, so it must run")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    with running_server(tiny_checkpoint, tmp_path_factory.mktemp("serve-browser") / "server.log") as address:
        yield address


def canvas_pixels(page) -> str:
    return page.eval_on_selector("#view", "canvas => canvas.toDataURL()")


@pytest.mark.slow
def test_the_page_captions_an_upload_shows_each_words_attention_and_reports_a_broken_file(
    browser, server, tiny_checkpoint, tmp_path
):
    image = sorted((tiny_checkpoint.parent / "shapes" / "test").glob("*.png"))[0]
    status, expected = post_image(server, image.read_bytes(), image.name, attention="true")  # the checkpoint's spec
    assert status == 200
    page = browser.new_page(viewport={"width": 900, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://{server[0]}:{server[1]}/")

    page.set_input_files("#file", str(image))
    page.wait_for_selector("#caption[data-state=done]", timeout=60_000)
    words = page.locator("#caption .word")
    assert words.all_inner_texts() == expected["words"]
    assert page.inner_text("#score") == f"{expected['score']:.3f}"
    assert page.inner_text("#trained-on").startswith("Trained on shapes (512 images): it describes images like those")

    plain = canvas_pixels(page)
    words.nth(0).hover()
    first = canvas_pixels(page)
    words.nth(words.count() - 1).hover()
    last = canvas_pixels(page)
    assert page.get_attribute("#view", "data-word") == str(words.count() - 1)
    assert first != plain and last != first  # each word dims the image by its own map
    rows, columns = expected["attention"]["grid"]
    peak = max(1.0, max(w for word in expected["attention"]["maps"] for row in word for w in row) * rows * columns)
    assert page.inner_text("#scale-max") == f"{peak:.1f}x"  # the PNGs' scale: multiples of an even spread
    assert "active" in (words.nth(words.count() - 1).get_attribute("class") or "")

    page.mouse.move(0, 0)  # off the words: the plain image again
    words.nth(1).click()  # pinned
    page.screenshot(path=str(tmp_path / "serve-page.png"), full_page=True)
    assert (tmp_path / "serve-page.png").stat().st_size > 0

    page.click("#play")
    assert page.inner_text("#play") == "Stop"
    page.wait_for_function("document.querySelector('#view').dataset.word !== '1'", timeout=10_000)
    page.click("#play")
    assert page.inner_text("#play") == "Play"

    broken = broken_images(tmp_path)["truncated.jpg"]
    page.set_input_files("#file", str(broken))
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    message = page.inner_text("#error")
    assert "422" in message and "truncated.jpg" in message and "cannot read image" in message
    assert page.is_hidden("#result")
    assert errors == []
    page.close()


RECORD_STATES = """() => {
    window.states = [];  // every state of the caption the page shows, with the picture beside it
    const caption = document.querySelector("#caption"), view = document.querySelector("#view");
    new MutationObserver(() => window.states.push({
        state: caption.dataset.state, words: [...caption.querySelectorAll(".word")].map((word) => word.textContent),
        word: view.dataset.word, pixels: view.toDataURL(),
    })).observe(caption, {childList: true, subtree: true, attributes: true});
}"""


@pytest.mark.slow
def test_the_page_shows_the_caption_growing_word_by_word_with_the_map_of_the_word_being_written(
    browser, server, tiny_checkpoint
):
    image = sorted((tiny_checkpoint.parent / "shapes" / "test").glob("*.png"))[1]
    status, expected = post_image(server, image.read_bytes(), image.name, attention="true")  # not streamed
    assert status == 200
    page = browser.new_page(viewport={"width": 900, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://{server[0]}:{server[1]}/")
    page.evaluate(RECORD_STATES)
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#caption[data-state=done]", timeout=60_000)
    states = page.evaluate("window.states")
    growing = [s for s in states if s["state"] == "streaming" and s["words"]]
    growing = [s for i, s in enumerate(growing) if i == 0 or s["words"] != growing[i - 1]["words"]]
    assert len(growing) >= 3, [s["words"] for s in states]
    assert [len(s["words"]) for s in growing] == list(range(1, len(growing) + 1))  # one more word at each state
    assert all(s["word"] == str(len(s["words"]) - 1) for s in growing)  # the map shown is the newest word's
    assert len({s["pixels"] for s in growing}) > 1  # and it changes as the words come
    assert page.locator("#caption .word").all_inner_texts() == expected["words"]  # the end: the non-streamed caption
    assert page.inner_text("#score") == f"{expected['score']:.3f}"
    assert errors == []
    page.close()
