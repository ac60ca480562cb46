"""The web page (GET /) in a real headless Chromium against a real HTTP server with a render
worker: upload, live progress, the result playing and seeking, cancel from the job list, the
API key asked for once, the server's message beside the field it names, names and messages
shown as text, never as HTML. Screenshots are kept in test-artifacts/.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); where they are
missing the tests skip with "CHROMIUM NOT TESTED"."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests
from api_support import Service
from conftest import EXAMPLES, ROOT, wait_for
from serving_support import stage_example
from werkzeug.serving import make_server

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


class LiveService:
    """The API app under a real (threaded werkzeug) HTTP server on a free port, and a render
    worker, on threads of the test process, over one data dir. While `restarting` is set,
    every request is answered 503 as a proxy does while the service behind it restarts."""

    def __init__(self, data_dir: Path, prefix: str = "", **overrides):
        self.service = Service(data_dir, **overrides)
        self.restarting = False
        self.prefix = prefix          # served under it, as a proxy that strips it does
        self.server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.service.start_worker()

    def _app(self, environ, start_response):
        if self.restarting:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"restarting"]
        if self.prefix:
            path = environ["PATH_INFO"]
            if not path.startswith(self.prefix + "/"):
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not under the prefix"]
            environ["PATH_INFO"] = path[len(self.prefix):]
        return self.service.app(environ, start_response)

    def job(self, job_id: str) -> dict:
        return self.service.client.get(f"/v1/jobs/{job_id}",
                                       headers=self._auth()).get_json()

    def _auth(self) -> dict[str, str]:
        key = self.service.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.service.close()


@pytest.fixture
def live(tmp_path):
    made: list[LiveService] = []

    def start(**overrides) -> LiveService:
        made.append(LiveService(tmp_path / f"data{len(made)}", **overrides))
        return made[-1]

    yield start
    for service in made:
        service.close()


def _chromium(*arguments: str, languages: str | None = None):
    """Debian's headless Chromium under Selenium; skipped, loudly, where it is not installed."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("CHROMIUM NOT TESTED: Debian's chromium and chromium-driver are not "
                    "installed (apt-get install chromium chromium-driver; .ci/run does it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1000", "--mute-audio", *arguments):
        options.add_argument(argument)
    if languages:
        options.add_experimental_option("prefs", {"intl.accept_languages": languages})
    # An explicit driver path: Selenium Manager never runs, so nothing is downloaded.
    driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    return driver


@pytest.fixture(scope="module")
def browser():
    driver = _chromium("--autoplay-policy=no-user-gesture-required")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory) -> Path:
    """The example speech three times over (~35 s): a render still running when cancelled."""
    folder = tmp_path_factory.mktemp("long")
    stage_example(folder, speech_repeats=3)
    return folder / "speech.wav"


def by_id(browser, element_id: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id)


def text(browser, element_id: str) -> str:
    return by_id(browser, element_id).text


def wait_page(browser, predicate, timeout: float, what: str):
    """Polls the page; on a timeout, keeps a screenshot of what it showed."""
    try:
        return wait_for(lambda: predicate(), timeout, what, every=0.1)
    except AssertionError:
        screenshot(browser, "web-page-timeout")
        raise


def screenshot(browser, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    return path


def choose_files(browser, video: Path | None, audio: Path | None) -> None:
    for element_id, path in (("video-file", video), ("audio-file", audio)):
        field = by_id(browser, element_id)
        field.clear()
        if path is not None:
            field.send_keys(str(path))


READ_PROGRESS = """
const text = (id) => document.getElementById(id).textContent.trim();
return [document.getElementById("progress").dataset.state || "",
        text("progress-percent"), text("progress-stage")];
"""


def follow_progress(browser, timeout: float) -> list[tuple[int, str]]:
    """The (percent, stage) the progress bar showed until the job ended."""
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # One script reads all three: separate reads can straddle an update of the
        # page and pair the upload's 100 % with the job's first stage.
        state, percent, stage = browser.execute_script(READ_PROGRESS)
        shown = (int(percent.rstrip(" %") or 0), stage)
        if not seen or seen[-1] != shown:
            seen.append(shown)
        if state in ("succeeded", "failed", "canceled"):
            return seen
        time.sleep(0.05)
    screenshot(browser, "web-page-timeout")
    raise AssertionError(f"the job did not end in {timeout} s; the bar showed {seen}")


def no_alert(browser) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = browser.switch_to.alert
    except NoAlertPresentException:
        return True
    return alert is None


def test_the_page_files_load_without_the_key_and_hold_nothing_from_elsewhere(service):
    svc = service(api_key="k")              # every response is checked against /openapi.json
    assert svc.client.get("/v1/jobs").status_code == 401
    bodies = {}
    for path, media in (("/", "text/html"), ("/ui/app.js", "text/javascript"),
                        ("/ui/app.css", "text/css")):
        response = svc.client.get(path)
        assert response.status_code == 200 and response.mimetype == media
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        again = svc.client.get(path, headers={"If-None-Match": response.headers["ETag"]})
        assert again.status_code == 304
        bodies[path] = response.get_data(as_text=True)
    assert '<script src="ui/app.js"' in bodies["/"] and 'href="ui/app.css"' in bodies["/"]
    assert '"/' not in bodies["/ui/app.js"] and "`/" not in bodies["/ui/app.js"]  # relative
    for body in bodies.values():              # no CDN, no web font: it works offline
        assert "http://" not in body and "https://" not in body and "//cdn" not in body
    raw = svc.client.client                   # a path the document does not have
    assert raw.get("/ui/index.html").status_code == 401      # only the three routes are open


SEEK = """
const [seconds, done] = arguments;
const player = document.getElementById("player");
player.addEventListener("seeked", () => done({time: player.currentTime,
                                              ready: player.readyState}), {once: true});
player.currentTime = seconds;
"""


def test_upload_progress_play_seek_and_cancel_from_the_list(browser, live, long_speech,
                                                            caplog):
    caplog.set_level(logging.INFO, logger="dhserve.api.access")
    service = live()
    browser.get(service.url + "/")
    wait_page(browser, lambda: text(browser, "service-status") == "ready", 30,
              "the page to show a ready render worker")
    assert "cpu" in text(browser, "workers") and "rendering on the CPU" in text(browser, "gpus")

    choose_files(browser, EXAMPLES / "avatar.mp4", EXAMPLES / "speech.wav")
    by_id(browser, "submit").click()
    seen = follow_progress(browser, 90)
    assert by_id(browser, "progress").get_attribute("data-state") == "succeeded", seen
    percents = [p for p, stage in seen if stage != "uploading"]     # the job's own progress
    assert percents == sorted(percents) and percents[-1] == 100, seen
    assert any(0 < p < 100 for p in percents), f"no progress between 0 and 100: {seen}"
    assert "lip-sync" in {stage for _, stage in seen}, seen
    job_id = text(browser, "progress-job").split()[1]
    assert service.job(job_id)["state"] == "succeeded"

    # The result plays in the page, streamed from the result route, and seeks.
    wait_page(browser, lambda: browser.execute_script(
        "return document.getElementById('player').readyState") >= 1, 30, "the video to load")
    duration, seekable_end, src = browser.execute_script(
        "const p = document.getElementById('player');"
        "return [p.duration, p.seekable.length ? p.seekable.end(0) : 0, p.currentSrc];")
    assert duration == pytest.approx(11.76, abs=0.1)
    assert seekable_end == pytest.approx(duration, abs=0.1)
    assert src == f"{service.url}/v1/jobs/{job_id}/result"
    seek = browser.execute_async_script(SEEK, 7.5)
    assert seek["time"] == pytest.approx(7.5, abs=0.1) and seek["ready"] >= 2
    assert any(f"GET /v1/jobs/{job_id}/result 206" in r.getMessage() for r in caplog.records)
    download = by_id(browser, "download")
    assert download.get_attribute("href") == src
    assert download.get_attribute("download") == f"{job_id}.mp4"
    assert requests.get(src, timeout=10).content[4:8] == b"ftyp"

    # A second job reuses the avatar already uploaded; it is cancelled from the job list.
    from selenium.webdriver.support.ui import Select

    reuse = Select(by_id(browser, "video-reuse"))
    wait_page(browser, lambda: len(reuse.options) == 2, 10, "the used avatar to be offered")
    assert reuse.options[1].text.startswith("avatar.mp4")
    reuse.select_by_index(1)
    choose_files(browser, None, long_speech)
    by_id(browser, "submit").click()
    wait_page(browser, lambda: text(browser, "progress-job").split()[1:2] not in ([], [job_id]),
              15, "the second job to be submitted")
    second = text(browser, "progress-job").split()[1]
    assert service.job(second)["inputs"]["video"] == service.job(job_id)["inputs"]["video"]

    # The service restarts behind its proxy (503 for a while): the bar says so and follows on.
    wait_for(lambda: service.job(second)["state"] == "running", 30, "the second job to run")
    service.restarting = True
    wait_page(browser, lambda: text(browser, "progress-error") == "reconnecting… (HTTP 503)",
              10, "the bar to say it is reconnecting")
    service.restarting = False
    wait_page(browser, lambda: text(browser, "progress-error") == "", 10,
              "the bar to follow the job again")
    row = f'tr[data-job="{second}"]'
    from selenium.webdriver.common.by import By

    wait_page(browser, lambda: browser.find_elements(By.CSS_SELECTOR, f"{row} button.cancel"),
              15, "the second job's cancel button")
    browser.find_element(By.CSS_SELECTOR, f"{row} button.cancel").click()
    wait_page(browser, lambda: browser.find_element(By.CSS_SELECTOR, row)
              .get_attribute("data-state") == "canceled", 30, "the second job to be canceled")
    assert service.job(second)["state"] == "canceled"
    wait_page(browser, lambda: by_id(browser, "progress").get_attribute("data-state")
              == "canceled", 10, "the progress bar to show the cancel")
    first_row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    assert first_row.get_attribute("data-state") == "succeeded"
    assert no_alert(browser)
    path = screenshot(browser, "web-page")
    assert path.stat().st_size > 20_000


def test_a_bad_input_shows_the_servers_message_beside_its_field(browser, live, tmp_path):
    service = live()
    browser.get(service.url + "/")
    wait_page(browser, lambda: text(browser, "service-status") == "ready", 30, "the page")
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n" * 50)
    choose_files(browser, not_video, EXAMPLES / "speech.wav")
    by_id(browser, "submit").click()
    wait_page(browser, lambda: text(browser, "error-video"), 15, "the video field's error")
    with not_video.open("rb") as video, (EXAMPLES / "speech.wav").open("rb") as audio:
        answer = requests.post(service.url + "/v1/jobs", timeout=10,
                               files={"video": video, "audio": audio}).json()
    assert answer["field"] == "video"
    assert text(browser, "error-video") == answer["detail"]    # the server's words, as sent
    assert "field invalid" in by_id(browser, "error-video").find_element(
        "xpath", "..").get_attribute("class")
    assert text(browser, "error-audio") == "" and text(browser, "error-form") == ""
    assert no_alert(browser)
    screenshot(browser, "web-page-bad-input")

    # An option the server refuses (a backend whose model file is absent): beside its select.
    from selenium.webdriver.support.ui import Select

    choose_files(browser, EXAMPLES / "avatar.mp4", EXAMPLES / "speech.wav")
    Select(by_id(browser, "backend")).select_by_value("wav2lip")
    by_id(browser, "submit").click()
    wait_page(browser, lambda: text(browser, "error-backend"), 15, "the backend's error")
    assert text(browser, "error-backend").startswith("needs models/wav2lip_gan_96.onnx")
    assert text(browser, "error-video") == ""       # the earlier message is gone
    assert service.service.store.list(None, 10) == []     # nothing was queued

    # A problem naming no field of the form (or one that is not a form field, like the
    # error-form slot's own name) goes under the Render button.
    for field, shown in (("form", "form: d1"), ("options", "options: d2"), (None, "d3")):
        browser.execute_script("showError(new ApiError(422, {code: 'x', detail: arguments[1], "
                               "field: arguments[0]}))", field, shown.split()[-1])
        assert text(browser, "error-form") == shown
    assert no_alert(browser)


XSS = "<img src=x onerror=window.__xss=1>"


def test_names_and_messages_from_jobs_are_shown_as_text(browser, live, short_speech, tmp_path):
    service = live()
    # A job whose input (a URL, as given) and error message (it cannot be downloaded) hold HTML.
    failing = service.service.client.post("/v1/jobs", json={
        "video": f"http://127.0.0.1:9/{XSS}.mp4", "audio": "http://127.0.0.1:9/a.wav"})
    failing = failing.get_json()["id"]
    wait_for(lambda: service.job(failing)["state"] == "failed", 30, "the job to fail")
    message = service.job(failing)["error"]["message"]
    assert XSS in message
    # An upload whose file name holds HTML: the page remembers and offers it by that name.
    named = tmp_path / f"{XSS}.mp4"
    shutil.copy(EXAMPLES / "avatar.mp4", named)
    browser.get(service.url + "/")
    wait_page(browser, lambda: text(browser, "service-status") == "ready", 30, "the page")
    choose_files(browser, named, short_speech)
    by_id(browser, "submit").click()
    seen = follow_progress(browser, 60)
    assert by_id(browser, "progress").get_attribute("data-state") == "succeeded", seen
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    row = f'tr[data-job="{failing}"]'
    wait_page(browser, lambda: browser.find_elements(By.CSS_SELECTOR, row), 10, "the list")
    assert browser.find_element(By.CSS_SELECTOR, f"{row} td:nth-child(3)").text == message
    assert XSS in browser.find_element(By.CSS_SELECTOR, f"{row} td").get_attribute("title")
    reuse = Select(by_id(browser, "video-reuse"))
    wait_page(browser, lambda: len(reuse.options) == 2, 10, "the used avatar to be offered")
    assert reuse.options[1].text.startswith(f"{XSS}.mp4 · job ")
    assert browser.execute_script("return [window.__xss, document.images.length]") == [None, 0]
    assert no_alert(browser)


# Blob URLs made and not yet revoked, and response bodies read as blobs, from here on.
TRACK_BLOBS = """
window.__liveBlobs = new Set();
window.__blobsRead = 0;
const create = URL.createObjectURL, revoke = URL.revokeObjectURL;
const blob = Response.prototype.blob;
URL.createObjectURL = (b) => { const u = create.call(URL, b); window.__liveBlobs.add(u); return u; };
URL.revokeObjectURL = (u) => { window.__liveBlobs.delete(u); revoke.call(URL, u); };
Response.prototype.blob = async function () {
  const b = await blob.call(this);
  window.__blobsRead += 1;
  return b;
};
"""


def test_with_an_api_key_the_page_asks_once_then_works(browser, live, short_speech):
    service = live(api_key="s3cret-key")
    assert requests.get(service.url + "/v1/jobs", timeout=10).status_code == 401
    for path in ("/", "/ui/app.js", "/ui/app.css"):      # the page itself needs no key
        assert requests.get(service.url + path, timeout=10).status_code == 200
    browser.get(service.url + "/")
    dialog = by_id(browser, "key-dialog")
    wait_page(browser, lambda: dialog.get_attribute("open") is not None, 15, "the key dialog")
    by_id(browser, "key-input").send_keys("wrong-key")
    by_id(browser, "key-submit").click()
    wait_page(browser, lambda: "refused" in text(browser, "key-error"), 15,
              "the wrong key to be refused")
    assert dialog.get_attribute("open") is not None
    by_id(browser, "key-input").send_keys("s3cret-key")
    by_id(browser, "key-submit").click()
    wait_page(browser, lambda: text(browser, "service-status") == "ready", 30,
              "the page to work with the key")
    assert dialog.get_attribute("open") is None

    choose_files(browser, EXAMPLES / "avatar.mp4", EXAMPLES / "speech.wav")
    by_id(browser, "submit").click()
    seen = follow_progress(browser, 90)
    assert seen[-1][0] == 100 and by_id(browser, "progress").get_attribute("data-state") \
        == "succeeded", seen
    wait_page(browser, lambda: browser.execute_script(
        "return document.getElementById('player').readyState") >= 1, 30, "the video to load")
    src = browser.execute_script("return document.getElementById('player').currentSrc")
    assert src.startswith("blob:")      # fetched with the key: a <video> cannot send it
    seek = browser.execute_async_script(SEEK, 4.0)
    assert seek["time"] == pytest.approx(4.0, abs=0.1)

    # Play for a second job while the first one's file still loads: the second plays, and
    # the first one's file, once loaded, is dropped (only the player's blob URL lives).
    first = text(browser, "progress-job").split()[1]
    shutil.copy(EXAMPLES / "avatar.mp4", service.service.temp / "avatar.mp4")
    shutil.copy(short_speech, service.service.temp / "short.wav")
    other = service.service.client.post("/v1/jobs", headers=service._auth(), json={
        "video": "avatar.mp4", "audio": "short.wav"}).get_json()["id"]
    wait_for(lambda: service.job(other)["state"] == "succeeded", 60, "the second job")
    from selenium.webdriver.common.by import By

    wait_page(browser, lambda: browser.find_elements(
        By.CSS_SELECTOR, f'tr[data-job="{other}"] button.play'), 10, "the second Play button")
    browser.execute_script(TRACK_BLOBS)
    browser.execute_script(
        "for (const id of arguments) "
        "document.querySelector(`tr[data-job='${id}'] button.play`).click();", first, other)
    wait_page(browser, lambda: browser.execute_script("return window.__blobsRead") == 2
              and text(browser, "result-summary").startswith(f"job {other[:8]}"), 30,
              "both files loaded, the second job shown")
    live_blobs, src = browser.execute_script(
        "return [[...window.__liveBlobs], document.getElementById('player').src]")
    assert live_blobs == [src] and src.startswith("blob:")

    browser.refresh()                   # the key is kept: not asked again
    wait_page(browser, lambda: text(browser, "service-status") == "ready", 30, "the page")
    wait_page(browser, lambda: "succeeded" in text(browser, "jobs"), 10, "the job list")
    assert by_id(browser, "key-dialog").get_attribute("open") is None
    assert no_alert(browser)
    screenshot(browser, "web-page-api-key")


def test_the_page_works_behind_a_proxy_that_serves_it_under_a_prefix(browser, live):
    """https://host/dh/ → the service's /: every request the page makes stays under /dh."""
    service = live(prefix="/dh")
    browser.get(service.url + "/dh/")
    wait_page(browser, lambda: text(browser, "service-status") == "ready", 30,
              "the page under /dh/ to reach the API")
    choose_files(browser, EXAMPLES / "avatar.mp4", EXAMPLES / "speech.wav")
    by_id(browser, "submit").click()
    follow_progress(browser, 90)
    assert by_id(browser, "progress").get_attribute("data-state") == "succeeded"
    wait_page(browser, lambda: browser.execute_script(
        "return document.getElementById('player').readyState") >= 1, 30, "the video to load")
    job_id = text(browser, "progress-job").split()[1]
    assert browser.execute_script("return document.getElementById('player').currentSrc") == \
        f"{service.url}/dh/v1/jobs/{job_id}/result"


@pytest.fixture(scope="module")
def chinese_browser():
    """A Chromium whose user asks for Chinese (its UI language and Accept-Language)."""
    driver = _chromium("--lang=zh-CN", languages="zh-CN,zh")
    yield driver
    driver.quit()


CHINESE_STAGES = {"上传中", "排队中", "准备中", "下载中", "检查素材", "音频特征提取中",
                  "人脸分析中", "口型同步中", "视频合成中", "完成"}


def test_a_chinese_browser_sees_the_page_in_chinese_and_the_switch_is_remembered(
        chinese_browser, live, short_speech):
    browser = chinese_browser
    service = live()
    browser.get(service.url + "/")
    wait_page(browser, lambda: text(browser, "service-status") == "就绪", 30,
              "the page in Chinese")
    assert browser.execute_script("return navigator.languages[0]").startswith("zh")
    assert browser.execute_script("return document.documentElement.lang") == "zh-CN"
    chinese = {"new-job-title": "新建数字人视频", "submit": "提交", "jobs-title": "任务队列",
               "result-title": "结果", "jobs-empty": "还没有任务。"}
    assert {key: text(browser, key) for key in chinese} == chinese
    assert "形象视频" in text(browser, "new-job") and "语音" in text(browser, "new-job")
    assert "渲染进程" in text(browser, "strip")
    screenshot(browser, "web-page-zh")

    by_id(browser, "lang-en").click()                      # English, and it stays so
    wait_page(browser, lambda: text(browser, "service-status") == "ready", 10, "English")
    assert (text(browser, "submit"), text(browser, "jobs-title")) == ("Render", "Jobs")
    assert "WORKERS" in text(browser, "strip").upper()      # upper-cased by the style sheet
    browser.refresh()
    wait_page(browser, lambda: text(browser, "service-status") == "ready", 30,
              "English kept after a reload")
    assert text(browser, "new-job-title") == "New video"

    by_id(browser, "lang-zh").click()                      # and back
    wait_page(browser, lambda: text(browser, "service-status") == "就绪", 10, "Chinese")
    browser.refresh()
    wait_page(browser, lambda: text(browser, "service-status") == "就绪", 30,
              "Chinese kept after a reload")
    assert text(browser, "submit") == "提交"

    choose_files(browser, EXAMPLES / "avatar.mp4", short_speech)
    by_id(browser, "submit").click()
    seen = follow_progress(browser, 90)
    assert by_id(browser, "progress").get_attribute("data-state") == "succeeded", seen
    assert {stage for _, stage in seen} <= CHINESE_STAGES, seen
    assert text(browser, "progress-job").startswith("任务 ")

    def shown(selector: str) -> str | None:     # read in one go: the list is redrawn live
        return browser.execute_script(
            "const n = document.querySelector(arguments[0]); return n && n.textContent",
            selector)

    wait_page(browser, lambda: shown("tr button.play") == "播放", 10, "the job in the list")
    assert shown("tr .badge") == "已完成"
    by_id(browser, "lang-en").click()                      # what is shown changes language too
    wait_page(browser, lambda: shown("tr .badge") == "succeeded"
              and shown("tr button.play") == "Play", 10, "the list in English")
    assert text(browser, "progress-job").startswith("job ")
    assert text(browser, "result-summary").startswith("job ")
    browser.execute_script("localStorage.removeItem('dhserve.lang')")
    assert no_alert(browser)


# -- backgrounds (issue 16) ------------------------------------------------------------------

def tiny_job_page(browser, live, video: Path, audio: Path) -> LiveService:
    """A fresh service's page, ready, with the video and the speech chosen."""
    service = live()
    browser.get(service.url + "/")
    wait_page(browser, lambda: text(browser, "service-status") == "ready", 30, "the page")
    choose_files(browser, video, audio)
    return service


def submit_and_follow(browser, service: LiveService, previous: str | None = None) -> dict:
    """Clicks Render, follows the bar until the job ends; the job as the API shows it."""
    by_id(browser, "submit").click()
    wait_page(browser, lambda: text(browser, "progress-job").split()[1:2] not in ([], [previous]),
              30, "the job to be submitted")
    seen = follow_progress(browser, 60)
    job_id = text(browser, "progress-job").split()[1]
    job = service.job(job_id)
    assert job["state"] == "succeeded", (seen, job)
    return job


def choose(browser, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(by_id(browser, element_id)).select_by_value(value)


# What the result shows: its frame's classes and painted background, the player's own
# background, where it plays from, and the download link.
RESULT_LOOK = """
const player = document.getElementById("player");
const frame = player.parentElement, link = document.getElementById("download");
return {frame: [...frame.classList], image: getComputedStyle(frame).backgroundImage,
        playerBackground: getComputedStyle(player).backgroundColor, src: player.currentSrc,
        ready: player.readyState, shown: !player.hidden,
        href: link.href, name: link.getAttribute("download"), label: link.textContent};
"""

def loaded_result(browser) -> dict:
    wait_page(browser, lambda: browser.execute_script(RESULT_LOOK)["ready"] >= 1, 30,
              "the video to load")
    return browser.execute_script(RESULT_LOOK)


# The alpha of the frame the player shows, drawn on a canvas: at a corner (background) and
# the middle (the face, always opaque).
SHOWN_ALPHA = """
const player = document.getElementById("player");
const canvas = document.createElement("canvas");
canvas.width = player.videoWidth;
canvas.height = player.videoHeight;
const context = canvas.getContext("2d");
context.drawImage(player, 0, 0);
const alpha = (x, y) => context.getImageData(x, y, 1, 1).data[3];
return [alpha(2, 2), alpha(canvas.width >> 1, canvas.height >> 1)];
"""


def test_a_transparent_result_plays_over_a_checkerboard_and_downloads_as_webm_or_mov(
        browser, live, tiny_template, tiny_speech):
    service = tiny_job_page(browser, live, tiny_template, tiny_speech)
    assert not by_id(browser, "container-choice").is_displayed()
    choose(browser, "background", "transparent")
    assert by_id(browser, "container-choice").is_displayed()
    assert by_id(browser, "container").get_attribute("value") == "webm"      # the default
    job = submit_and_follow(browser, service)
    assert job["options"] == {"background": "transparent", "container": "webm"}
    assert job["result"]["container"] == "webm"

    look = loaded_result(browser)
    assert "checkerboard" in look["frame"] and "gradient" in look["image"], look
    assert look["playerBackground"] == "rgba(0, 0, 0, 0)", look     # the board shows through
    url = f"{service.url}/v1/jobs/{job['id']}/result"
    assert look["src"] == look["href"] == url
    assert (look["name"], look["label"]) == (f"{job['id']}.webm", "Download WebM")
    answer = requests.get(url, timeout=10)
    assert answer.headers["Content-Type"] == "video/webm"
    assert answer.content[:4] == b"\x1a\x45\xdf\xa3"                 # EBML: a Matroska file
    browser.execute_async_script(SEEK, 0.2)
    corner, middle = browser.execute_script(SHOWN_ALPHA)
    assert (corner, middle) == (0, 255), "the browser shows the background see-through"
    screenshot(browser, "web-page-transparent")

    # A MOV is for video editors: offered for download, not played; no checkerboard left.
    choose(browser, "container", "mov")
    mov = submit_and_follow(browser, service, previous=job["id"])
    assert mov["options"] == {"background": "transparent", "container": "mov"}
    wait_page(browser, lambda: browser.execute_script(RESULT_LOOK)["name"]
              == f"{mov['id']}.mov", 15, "the MOV's download link")
    look = browser.execute_script(RESULT_LOOK)
    assert not look["shown"] and "checkerboard" not in look["frame"], look
    assert look["label"] == "Download MOV" and by_id(browser, "result-elsewhere").is_displayed()
    assert "ProRes 4444" in text(browser, "result-elsewhere")
    answer = requests.get(look["href"], timeout=10)
    assert answer.headers["Content-Type"] == "video/quicktime"

    # The server's refusal of the file format shows beside its select (as the others do).
    browser.execute_script("showError(new ApiError(422, {code: 'options.invalid', "
                           "field: 'container', detail: arguments[0]}))", "needs webm or mov")
    assert text(browser, "error-container") == "needs webm or mov"
    assert text(browser, "error-form") == "" and text(browser, "error-background") == ""
    assert no_alert(browser)


def test_a_colour_background_is_sent_as_its_value_and_plays_as_an_mp4(
        browser, live, tiny_template, tiny_speech):
    service = tiny_job_page(browser, live, tiny_template, tiny_speech)
    colour = by_id(browser, "background-colour")
    assert not colour.is_displayed()
    choose(browser, "background", "colour")
    assert colour.is_displayed() and colour.get_attribute("value") == "#00b140"
    assert not by_id(browser, "container-choice").is_displayed()
    browser.execute_script(          # what the picker does when a colour is picked
        "arguments[0].value = arguments[1];"
        "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));", colour, "#3366cc")
    job = submit_and_follow(browser, service)
    assert job["options"] == {"background": "#3366cc"}
    look = loaded_result(browser)
    assert "checkerboard" not in look["frame"] and look["image"] == "none", look
    assert (look["name"], look["label"]) == (f"{job['id']}.mp4", "Download MP4")
    assert requests.get(look["src"], timeout=10).headers["Content-Type"] == "video/mp4"


def test_an_image_background_is_uploaded_and_a_bad_one_is_refused_beside_its_field(
        browser, live, tiny_template, tiny_speech, tmp_path):
    import cv2
    import numpy as np

    service = tiny_job_page(browser, live, tiny_template, tiny_speech)
    choose(browser, "background", "image")
    by_id(browser, "submit").click()                       # no image chosen: the page says so
    assert text(browser, "error-background") == "choose an image file"

    not_image = tmp_path / "backdrop.png"
    not_image.write_text("not an image\n" * 20)
    by_id(browser, "background-file").send_keys(str(not_image))
    by_id(browser, "submit").click()
    with not_image.open("rb") as image, tiny_template.open("rb") as video, \
            tiny_speech.open("rb") as audio:
        answer = requests.post(service.url + "/v1/jobs", timeout=10, files={
            "video": video, "audio": audio, "background": image}).json()
    assert (answer["code"], answer["field"]) == ("options.invalid", "background"), answer
    wait_page(browser, lambda: text(browser, "error-background") == answer["detail"], 15,
              "the server's refusal beside the background")
    assert "field invalid" in by_id(browser, "error-background").find_element(
        "xpath", "..").get_attribute("class")
    assert text(browser, "error-form") == "" and text(browser, "error-video") == ""
    assert service.service.store.list(None, 10) == []      # nothing was queued

    backdrop = tmp_path / "beach.png"
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    cv2.imwrite(str(backdrop), np.dstack([np.tile(ramp, (48, 1))] * 3))
    field = by_id(browser, "background-file")
    field.clear()
    field.send_keys(str(backdrop))
    job = submit_and_follow(browser, service)
    assert job["options"] == {} and job["inputs"].get("background"), job
    from selenium.webdriver.common.by import By

    row = f'tr[data-job="{job["id"]}"] td'
    wait_page(browser, lambda: browser.find_elements(By.CSS_SELECTOR, row), 10, "the list")
    assert "background: beach.png" in browser.find_element(By.CSS_SELECTOR, row) \
        .get_attribute("title")
    assert no_alert(browser)
