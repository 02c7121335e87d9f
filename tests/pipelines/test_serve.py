"""``lvmae serve`` over a real extraction (the session's, made by Ray Data with the tiny
encoder from ffmpeg-made mp4s, plus a real extraction of broken files into the same output),
hit over HTTP: Starlette's client for most pages, a real uvicorn server on a loopback port
for traversal and ranges, and Debian's Chromium through Selenium for what a person sees.

The served output is this module's own copy (thumbnails are cached inside it)."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest
from starlette.testclient import TestClient

from lvmae.config import ExtractConfig
from lvmae.storage import read_segments, read_videos
from lvmae.video.thumbnails import SHORT_SIDE
from pipelines.cli import main
from pipelines.search import INDEX_DIR, search
from pipelines.serve.app import MAX_K, MAX_QUERY_CHARS, create_app
from pipelines.serve.archive import Archive, ServeError, video_key
from pipelines.serve.server import bind
from tests.pipelines.conftest import SEGMENT_S, copy_outputs, loaded

pytestmark = pytest.mark.slow  # the session's extraction, Ray, a server

QUERY = "a colourful fractal zoom"
BROKEN = ("text", "partial")  # a failed file and one that decodes half-way


@pytest.fixture(scope="module")
def output(sample_extraction, broken_videos, tmp_path_factory) -> Path:
    """A copy of the session's extraction, with broken files extracted into it as well."""
    from pipelines.extract import run_extraction

    base = tmp_path_factory.mktemp("serve")
    out = copy_outputs(sample_extraction, base / "extract")
    bad = base / "bad"
    bad.mkdir()
    for kind in BROKEN:
        shutil.copy(broken_videos[kind], bad / f"{kind}.mp4")
    run_extraction(str(bad), str(out), ExtractConfig(segment_s=SEGMENT_S), progress=False)
    return out


@pytest.fixture(scope="module")
def archive(output) -> Archive:
    with loaded(Archive(str(output))) as archive:
        yield archive


@pytest.fixture(scope="module")
def client(archive) -> TestClient:
    return TestClient(create_app(archive))


@pytest.fixture(scope="module")
def server(archive):
    """The app on a real uvicorn server, on a free loopback port; yields its base URL."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(create_app(archive), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(10)
    sock.close()


def jpeg_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of a JPEG, decoded by FFmpeg (PyAV)."""
    assert data[:3] == b"\xff\xd8\xff", "not a JPEG"
    with av.open(io.BytesIO(data), format="image2pipe") as c:
        frame = next(c.decode(video=0))
        return frame.width, frame.height


def raw_get(base: str, path: str) -> int:
    """Status of ``GET path`` sent byte for byte (no client normalises ``..`` away)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = s.recv(4096).decode("latin-1")
    return int(head.split()[1])


# ---------------------------------------------------------------------------- pages


def test_search_page_shows_k_ranked_segments_with_thumbnails(client, archive, output):
    page = client.get("/", params={"q": QUERY, "k": 5})
    assert page.status_code == 200
    assert page.text.count('class="card result"') == 5
    api = client.get("/api/search", params={"q": QUERY, "k": 5}).json()["results"]
    expected = search(str(output), query=QUERY, top_k=5, exact=True)
    assert [(r["video_id"], r["segment_index"]) for r in api] == [
        (r["video_id"], r["segment_index"]) for r in expected
    ]
    assert [r["score"] for r in api] == pytest.approx([r["score"] for r in expected], abs=1e-5)
    for r in api:  # every card: its thumbnail, video page, player link and more-like-this
        assert f"/thumb/{r['key']}/{r['segment_index']}.jpg" in page.text
        assert f"/segment/{r['key']}/{r['segment_index']}" in page.text
        assert f"/?like={r['key']}:{r['segment_index']}" in page.text
        thumb = client.get(f"/thumb/{r['key']}/{r['segment_index']}.jpg")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert min(jpeg_size(thumb.content)) == SHORT_SIDE


def test_thumbnails_are_made_once_then_read_from_the_cache(client, archive, output):
    key = video_key("order_abcd/order_abcd_000.mp4")
    made = archive.thumbnails.made
    first = client.get(f"/thumb/{key}/3.jpg").content
    assert archive.thumbnails.made == made + 1
    assert client.get(f"/thumb/{key}/3.jpg").content == first
    assert archive.thumbnails.made == made + 1  # served from the cache
    cached = archive.thumbnails.path(archive.config_id, "order_abcd/order_abcd_000.mp4", 3)
    assert cached.read_bytes() == first and cached.is_relative_to(output / "thumbnails")
    again = Archive(str(output)).start()  # a restarted server: the cache on disk is used
    assert again.wait(60).error is None
    assert again.thumbnail(key, 3) == first and again.thumbnails.made == 0


def test_more_like_this_searches_by_the_segments_embedding(client, output):
    key = video_key("order_abcd/order_abcd_000.mp4")
    rows = client.get("/api/search", params={"like": f"{key}:1", "k": 4}).json()["results"]
    expected = search(str(output), example=("order_abcd/order_abcd_000.mp4", 3.0), top_k=4)
    assert [(r["video_id"], r["segment_index"]) for r in rows] == [
        (r["video_id"], r["segment_index"]) for r in expected
    ]
    page = client.get("/", params={"like": f"{key}:1", "k": 4})
    assert page.status_code == 200 and page.text.count('class="card result"') == 4
    assert "More like" in page.text
    assert client.get("/", params={"like": f"{key}:999"}).status_code == 404


def test_video_page_strip_status_and_failure_reason(client, output):
    segs = read_segments(str(output), columns=["video_id", "segment_index"])
    vid = "order_abcd/order_abcd_000.mp4"
    n = sum(v == vid for v in segs["video_id"].to_pylist())
    page = client.get(f"/video/{video_key(vid)}")
    assert page.status_code == 200 and page.text.count("/thumb/") == n
    assert 'id="status">ok<' in page.text
    videos = {r["video_id"]: r for r in read_videos(str(output)).to_pylist()}
    for kind in BROKEN:
        row = videos[f"{kind}.mp4"]
        page = client.get(f"/video/{video_key(row['video_id'])}")
        assert page.status_code == 200
        assert f'id="status">{row["status"]}<' in page.text
        assert row["error"].split(":")[0] in page.text  # the recorded reason, escaped
    assert videos["text.mp4"]["status"] == "failed"
    assert videos["partial.mp4"]["status"] == "partial"


def test_segment_page_plays_the_video_from_the_segment(client):
    key = video_key("order_abcd/order_abcd_000.mp4")
    page = client.get(f"/segment/{key}/2")
    assert page.status_code == 200
    assert f'src="/media/{key}#t={2 * SEGMENT_S},{3 * SEGMENT_S}"' in page.text


def test_run_page_lists_every_video_with_its_status_and_the_mlflow_run(client, output):
    page = client.get("/run")
    assert page.status_code == 200
    videos = read_videos(str(output)).to_pylist()
    assert page.text.count('<tr><td><a href="/video/') == len(videos)
    statuses = [v["status"] for v in videos]
    assert f"{statuses.count('failed')} failed" in page.text
    assert f"{statuses.count('partial')} partial" in page.text
    assert f"{statuses.count('ok')} done" in page.text
    assert 'id="mlflow"' in page.text and "#/experiments/" in page.text


# ---------------------------------------------------------------------------- safety


def test_traversal_and_unknown_names_are_404_on_a_real_server(server, output):
    import httpx

    for path in [
        "/media/../../etc/passwd", "/media/..%2F..%2Fetc%2Fpasswd", "/media/%2e%2e%2fmanifest.json",
        "/media//etc/passwd", "/media/%2Fetc%2Fpasswd", "/thumb/..%2Fmanifest.json/1.jpg",
        "/thumb/../manifest.json", "/video/..", "/video/%2e%2e", "/figure/-1.png",
        "/figure/0.png", f"/media/{output}/segments", "/manifest.json", "/segments/",
        "/video/0123456789abcdef", "/thumb/0123456789abcdef/0.jpg",
    ]:  # fmt: skip
        assert raw_get(server, path) == 404, path
    key = video_key("order_abcd/order_abcd_000.mp4")
    with httpx.Client(base_url=server) as http:
        ranged = http.get(f"/media/{key}", headers={"Range": "bytes=0-99"})
        assert ranged.status_code == 206 and len(ranged.content) == 100
        assert ranged.headers["content-type"] == "video/mp4"
        assert http.post("/", data={"q": "x"}).status_code == 405  # read-only: no writes
        assert http.get("/api/search", params={"q": QUERY, "k": 3}).status_code == 200


def test_query_length_and_k_are_bounded(client, archive):
    long = "x" * (MAX_QUERY_CHARS + 1)
    page = client.get("/", params={"q": long})
    assert page.status_code == 400 and f"at most {MAX_QUERY_CHARS}" in page.text
    assert client.get("/api/search", params={"q": long}).status_code == 400
    for k in ("0", str(MAX_K + 1), "abc", "-3", "1e9"):
        assert client.get("/api/search", params={"q": "bars", "k": k}).status_code == 400, k
        assert "k must be" in client.get("/", params={"q": "bars", "k": k}).text
    rows = client.get("/api/search", params={"q": "bars", "k": MAX_K}).json()["results"]
    assert len(rows) == min(MAX_K, archive.searcher.size)


def test_loading_progress_and_load_errors_show_on_the_page(output, tmp_path):
    own = copy_outputs(output, tmp_path / "extract")
    waiting = TestClient(create_app(Archive(str(own))))  # not started: still loading
    page = waiting.get("/", params={"q": "bars"})
    assert page.status_code == 200 and 'id="loading"' in page.text
    assert waiting.get("/api/search", params={"q": "bars"}).status_code == 503
    # an approximate index saved for another encoder: the page says so (and how to fix it)
    search(str(own), query="bars", exact=False, rebuild_index=True)
    meta = own / INDEX_DIR / "meta.json"
    data = json.loads(meta.read_text())
    data["fingerprint"]["embedding_dim"] = 1024
    meta.write_text(json.dumps(data))
    broken = Archive(str(own), exact=False).start()
    assert "rebuild-index" in (broken.wait(60).error or "")
    page = TestClient(create_app(broken)).get("/")
    assert 'id="load-error"' in page.text and "rebuild-index" in page.text


def test_a_missing_index_is_built_while_the_page_shows_progress(output, tmp_path):
    own = copy_outputs(output, tmp_path / "extract")
    shutil.rmtree(own / INDEX_DIR, ignore_errors=True)
    archive = Archive(str(own), exact=False).start()
    assert archive.wait(60).error is None
    assert (own / INDEX_DIR / "meta.json").is_file() and archive.searcher.index is not None
    rows = TestClient(create_app(archive)).get("/api/search", params={"q": QUERY, "k": 3})
    assert len(rows.json()["results"]) == 3


def test_a_missing_or_corrupt_output_is_a_one_line_error(output, tmp_path, capsys):
    res = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "serve", str(tmp_path / "nowhere")],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "does not exist" in res.stderr
    bad_segments = copy_outputs(output, tmp_path / "a")
    next((bad_segments / "segments").glob("*.parquet")).write_bytes(b"not parquet at all")
    bad_manifest = copy_outputs(output, tmp_path / "b")
    (bad_manifest / "manifest.json").write_text("{ half a manifest")
    not_output = tmp_path / "c"
    not_output.mkdir()
    for path, says in ((bad_segments, "not a readable Parquet"), (bad_manifest, "not JSON"),
                       (not_output, "no manifest.json")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(["serve", str(path), "--port", "0"])
        err = capsys.readouterr().err
        assert exit_.value.code == 1 and err.startswith("error: ") and says in err, err
        assert err.strip().count("\n") == 0
    with pytest.raises(ServeError):
        Archive(str(not_output))


# ---------------------------------------------------------------------------- browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver); nothing here downloads a browser",
)
def test_in_chromium_search_play_and_a_failed_videos_reason(server, output, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,1600",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(arg)  # fmt: skip
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    wait = WebDriverWait(driver, 30)
    k = 6
    try:
        driver.get(server + "/")
        box = driver.find_element(By.NAME, "q")
        box.send_keys(QUERY)
        kbox = driver.find_element(By.NAME, "k")
        kbox.clear()
        kbox.send_keys(str(k))
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.result")) == k)
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"))  # fmt: skip
        widths = driver.execute_script(
            "return [...document.querySelectorAll('#results img')].map(i => i.naturalWidth)"
        )
        assert len(widths) == k and min(widths) > 0
        shot = tmp_path / "search.png"
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        first = driver.find_element(By.CSS_SELECTOR, ".card.result")
        start = float(first.get_attribute("data-start"))
        first.find_element(By.CSS_SELECTOR, "a.play").click()
        wait.until(
            lambda d: d.execute_script(
                "const v = document.getElementById('player'); return v && v.readyState >= 1"
            )
        )
        now = driver.execute_script("return document.getElementById('player').currentTime")
        assert start - 0.05 <= now <= start + SEGMENT_S, (start, now)
        failed = next(v for v in read_videos(str(output)).to_pylist() if v["status"] == "failed")
        driver.get(f"{server}/video/{video_key(failed['video_id'])}")
        reason = driver.find_element(By.ID, "reason").text
        assert reason and reason.split(":")[0] in failed["error"]
        driver.save_screenshot(str(tmp_path / "failed.png"))
    finally:
        driver.quit()
