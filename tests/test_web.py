"""The web page of `lipstep serve`, end to end in a headless browser: the system's chromium driven by Playwright
(no browser download), the real server on a loopback port with the tiny model. A speech file and a fake microphone
stream frames onto the canvas, the mp4 path plays, and malformed actions show the server's error on the page.

Skips without playwright or chromium; CI installs both and sets LIPSTEP_REQUIRE_BROWSER=1, so there it fails
instead of skipping."""

import itertools
import os
import shutil
import time

import pytest
import soundfile as sf

from lipstep.data.speech import synthesize
from tests.liveserver import live_server
from tests.tinypipe import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM = os.environ.get("LIPSTEP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not CHROMIUM:
        return "no chromium on PATH (apt-get install chromium, or set LIPSTEP_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    speech = synthesize("Hello, I am talking.", voice="en-us")
    path = tmp_path_factory.mktemp("web") / "speech.wav"
    sf.write(path, speech.wav, speech.sample_rate, subtype="PCM_16")
    return path


def test_the_page_streams_plays_and_shows_errors(speech_wav):
    """One browser for the whole story (a module fixture would start one per xdist worker)."""
    reason = _missing()
    if reason:
        if os.environ.get("LIPSTEP_REQUIRE_BROWSER"):
            pytest.fail(f"LIPSTEP_REQUIRE_BROWSER is set but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={speech_wav}", "--autoplay-policy=no-user-gesture-required"]
    with live_server(tiny_pipeline(), example_portraits=2, max_upload_mb=1) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        page = browser.new_page()
        problems = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(url + "/")
        _wait(page, "window.lipstep && window.lipstep.ready")
        _stream_a_file(page, speech_wav)
        _stream_the_microphone_then_make_an_mp4(page)
        _malformed_actions_show_the_servers_error(page)
        browser.close()
    assert not problems, problems  # no uncaught script error, no CSP violation


def _wait(tab, expression: str, timeout: float = 60.0):
    """Poll `expression` with page.evaluate (Playwright's wait_for_function evals, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout
    while not (value := tab.evaluate(expression)):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        tab.wait_for_timeout(50)
    return value


def _session(tab) -> dict:
    return tab.evaluate("(({times, drawn, dropped, ended, firstLatency}) => ({times, drawn, dropped, ended, "
                        "firstLatency}))(window.lipstep.session)")


def _canvas_is_drawn(tab) -> bool:
    return tab.evaluate("(() => { const c = document.getElementById('avatar');"
                        "return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v) => v > 0); })()")


def _stream_a_file(page, speech_wav):
    assert page.locator("#portrait-list input").count() == 2
    page.set_input_files("#speech-file", str(speech_wav))
    _wait(page, "window.lipstep.speech !== null")
    page.click("#stream-button")
    _wait(page, "window.lipstep.session.finished")
    s = _session(page)
    times = s["times"]
    assert s["ended"]["frames"] == len(times) >= 25
    assert all(b > a for a, b in itertools.pairwise(times))  # timestamps increase
    assert s["drawn"] >= 1 and s["drawn"] + s["dropped"] == len(times) and s["firstLatency"] > 0
    assert _canvas_is_drawn(page)
    assert page.inner_text("#stat-frames") == str(len(times)) and page.inner_text("#stat-errors") == "0"
    assert page.locator("#error").is_hidden()


def _stream_the_microphone_then_make_an_mp4(page):
    page.evaluate("document.getElementById('opt-preview').value = '1'")  # the live stream with previews
    page.click("#mic-button")
    _wait(page, "window.lipstep.session.times.length > 0")
    page.click("#stop-button")
    _wait(page, "window.lipstep.session.finished")
    s = _session(page)
    assert s["ended"]["frames"] == len(s["times"]) > 0
    page.evaluate("document.getElementById('opt-preview').value = '0'")
    assert page.evaluate("window.lipstep.speech.name") == "recording.wav"
    page.click("#generate-button")
    _wait(page, "document.getElementById('video').src.startsWith('blob:')")
    assert "mp4 ready" in page.inner_text("#status")
    assert page.evaluate("window.lipstep.errors.length") == 0


def _malformed_actions_show_the_servers_error(page):
    page.click("summary")
    page.fill("#opt-steps", "100000")
    page.click("#stream-button")
    _wait(page, "window.lipstep.errors.length === 1")
    assert "Server error 400: steps must be in 1..100" in page.inner_text("#error")
    page.fill("#opt-steps", "")
    page.set_input_files("#portrait-file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hi"}])
    _wait(page, "window.lipstep.errors.length === 2")
    assert "Server error 400: image: not an image" in page.inner_text("#error")
    assert page.inner_text("#stat-errors") == "2" and page.locator("#error-log li").count() == 2
    assert page.locator("#portrait-list input").count() == 2  # the refused upload added nothing
