"""``tagstack serve`` as a client meets it: a real server process on a loopback port, a real browser, real load.

The service must give what the Python API gives for the same file, refuse every
bad request with a 4xx and one line, leave no upload behind, and hold up under
concurrent clients with bad files mixed in.
"""

import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from synth import SR, render  # noqa: E402
from tagstack.inference.tagger import Tagger  # noqa: E402
from tagstack.models.file import save_model  # noqa: E402
from test_equivalence import random_tagger  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_serve import free_port, start_server  # noqa: E402


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    model = random_tagger()
    model.groups = {model.tags[0]: "first", model.tags[1]: "first"}  # the others have no group: "other"
    save_model(model, path)
    (path.with_suffix(".md")).write_text("# Model card: tiny\n\nA randomly initialised test model.\n")
    return path


@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory):
    """A real ``tagstack serve`` process (2 MB upload limit, 100 s duration limit) with its own TMPDIR."""
    tmp = tmp_path_factory.mktemp("server-tmp")
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = start_server(str(model_file), port, ["--device", "cpu", "--max-upload-mb", "2", "--max-seconds", "100"], env=env)
    yield f"127.0.0.1:{port}", proc, tmp
    proc.terminate()
    proc.wait(timeout=30)


def request(server, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(server[0].split(":")[0], int(server[0].split(":")[1]), timeout=120)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    text = r.read().decode()
    return r.status, json.loads(text)  # every answer is one strict JSON object


def multipart(name: str, data: bytes, field: str = "file") -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def wav_bytes(y: np.ndarray, sr: int = SR, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    path = tmp_path_factory.mktemp("song") / "song.mp3"
    sf.write(path, render({"low", "pulse"}, 22.0, np.random.default_rng(3)), SR, format="MP3")
    return path


def test_health_and_model_information(server, model_file):
    assert request(server, "GET", "/api/health") == (200, {"status": "ok", "model": "tiny", "device": "cpu"})
    status, info = request(server, "GET", "/api/model")
    tagger = Tagger(model_file, device="cpu")
    assert status == 200 and info["tags"] == tagger.tags and info["n_features"] == tagger.model.n_features
    assert info["scales"] == ["18", "27", "54"] and info["card"].startswith("# Model card: tiny")
    assert info["tag_groups"] == tagger.model.groups and len(info["tag_groups"]) == 2
    status, spec = request(server, "GET", "/openapi.json")
    assert status == 200 and "/api/tag" in spec["paths"]


def test_the_service_gives_what_the_api_gives(server, model_file, song):
    """Raw body and multipart uploads: the same tags, embedding and taggram as ``Tagger`` on the file."""
    tagger = Tagger(model_file, device="cpu")
    expected = tagger.predict(song, taggram=True, hop=4.0)
    data = song.read_bytes()
    status, raw = request(server, "POST", "/api/tag?top_k=0&filename=song.mp3", data, {"Content-Type": "audio/mpeg"})
    assert status == 200 and raw["file"] == "song.mp3" and raw["seconds"] == pytest.approx(22.0, abs=0.05)
    got = {t["tag"]: t["probability"] for t in raw["tags"]}
    assert list(got) == [t for t, _ in expected.top(0)]
    np.testing.assert_allclose([got[t] for t in tagger.tags], expected.probs, rtol=1e-5, atol=1e-6)

    body, headers = multipart("song.mp3", data)
    status, full = request(server, "POST", "/api/tag?top_k=2&embed=true&scales=27,54&layers=1,2&taggram=true&hop=4", body, headers)
    assert status == 200 and [t["tag"] for t in full["tags"]] == [t for t, _ in expected.top(2)]
    np.testing.assert_allclose(full["embedding"]["values"], tagger.embed(song, scales=[27, 54], layers=[1, 2]), rtol=1e-5, atol=1e-6)
    assert full["embedding"]["scales"] == ["27", "54"] and full["embedding"]["layers"] == [1, 2]
    np.testing.assert_allclose(full["taggram"]["probabilities"], expected.taggram, atol=1e-5)
    np.testing.assert_allclose(full["taggram"]["starts"], expected.window_starts, atol=1e-3)
    # what other clients send: the media type in capitals, the name only as RFC 5987's filename* (a non-ASCII name)
    body = body.replace(b'filename="song.mp3"', b"filename*=UTF-8''na%C3%AFve%20song.mp3")
    headers = {"Content-Type": headers["Content-Type"].replace("multipart/form-data", "Multipart/Form-Data")}
    status, other = request(server, "POST", "/api/tag?top_k=2", body, headers)
    assert status == 200 and other["file"] == "na\u00efve song.mp3" and other["tags"] == full["tags"]

    status, thr = request(server, "POST", "/api/tag?threshold=0.5", data, {"Content-Type": "audio/mpeg"})
    assert status == 200 and [t["tag"] for t in thr["tags"]] == [t for t, _ in expected.top(threshold=0.5)]

    status, grouped = request(server, "POST", "/api/tag?top_k=1&per_group=true", data, {"Content-Type": "audio/mpeg"})
    assert status == 200 and [(t["tag"], t["group"]) for t in grouped["tags"]] == [
        (t, expected.group_of(t)) for t, _ in expected.top(1, per_group=True)
    ]
    assert [t["group"] for t in grouped["tags"]] == ["first", "other"]


@pytest.mark.parametrize(
    "case,status,reason",
    [
        ("text", 422, "text.mp3: cannot"),
        ("empty", 400, "empty"),
        ("nan", 422, "NaN or infinite"),
        ("type", 415, "unsupported file type '.txt'"),
        ("content_type", 415, "unsupported Content-Type 'text/plain'"),
        ("large", 413, "larger than this service's limit of 2 MB"),
        ("long", 413, "at most 100 s"),
        ("top_k", 400, "top_k must be a whole number >= 0"),
        ("threshold", 400, "threshold must be a number >= 0 and <= 1, got 2.0"),
        ("top_k_text", 400, "parameter top_k"),
        ("scales", 400, "scales ['a', 'b'] not in the features"),
        ("missing_scale", 400, "36"),
        ("hop", 400, "hop must be a number > 0 and <= 10,000,000 (seconds), got 'soon'; or 'clip' or 'auto'"),
        ("hop_inf", 400, "hop must be a number > 0"),
        ("hop_huge", 400, "hop must be a number > 0 and <= 10,000,000 (seconds), got '1e308'"),
        ("hop_tiny", 400, "taggram windows over 22 s; this service makes at most 2000"),
        ("field", 400, "field named 'file'"),
        ("no_route", 404, "Not Found"),
        ("method", 405, "Method Not Allowed"),
        ("no_boundary", 400, "boundary"),
        ("two_files", 400, "a multipart upload takes one file"),
        ("bad_multipart", 400, "the multipart body is malformed"),
        ("unterminated", 400, "the multipart body ends before its closing boundary"),
        ("long_static", 404, "no such file"),
        ("unused", 400, "hop needs taggram=true; layers needs embed=true"),
    ],
)
def test_bad_requests_get_a_4xx_and_one_line(server, song, case, status, reason):
    rng = np.random.default_rng(0)
    nan = np.zeros(SR, np.float32)
    nan[10] = np.nan
    data, path, headers = song.read_bytes(), "/api/tag", {"Content-Type": "application/octet-stream"}
    if case == "text":
        data, path = b"this is not audio\n" * 100, "/api/tag?filename=text.mp3"
    elif case == "empty":
        data = b""
    elif case == "nan":
        data = wav_bytes(nan, subtype="FLOAT")
    elif case == "type":
        path = "/api/tag?filename=notes.txt"
    elif case == "content_type":
        headers = {"Content-Type": "text/plain"}
    elif case == "large":
        data = wav_bytes(rng.standard_normal(SR * 70).astype(np.float32) * 0.1, subtype="FLOAT")  # ~4.5 MB
    elif case == "long":
        data = wav_bytes(np.zeros(8000 * 120, np.int16), sr=8000, subtype="PCM_16")  # 120 s in 1.9 MB
    elif case in ("top_k", "threshold", "top_k_text", "scales", "missing_scale", "hop", "hop_inf", "hop_huge", "hop_tiny", "unused"):
        path += {
            "top_k": "?top_k=-1",
            "threshold": "?threshold=2",
            "top_k_text": "?top_k=many",
            "scales": "?embed=true&scales=a,b",
            "missing_scale": "?embed=true&scales=36",
            "hop": "?taggram=true&hop=soon",
            "hop_inf": "?taggram=true&hop=inf",
            "hop_huge": "?taggram=true&hop=1e308",
            "hop_tiny": "?taggram=true&hop=0.001",
            "unused": "?hop=5&layers=1",
        }[case]
    elif case == "field":
        data, headers = multipart("song.mp3", data, field="audio")
    elif case == "no_route":
        path = "/api/nothing"
    elif case == "no_boundary":
        headers = {"Content-Type": "multipart/form-data"}
    elif case == "two_files":
        part = b'--b0\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n\r\n' + data + b"\r\n"
        data, headers = part + part + b"--b0--\r\n", {"Content-Type": "multipart/form-data; boundary=b0"}
    elif case == "unterminated":
        data, headers = multipart("song.mp3", data)
        data = data[: data.rindex(b"\r\n--")]  # the file's bytes, then nothing: a client that stopped short
    elif case == "bad_multipart":
        data, headers = b"--xyz\r\nno headers here\x00\r\n\r\n" * 3, {"Content-Type": "multipart/form-data; boundary=abc"}
    elif case == "long_static":
        path = "/static/" + "a" * 300 + ".js"  # a name longer than the filesystem takes
    got, body = request(server, "GET" if case in ("method", "long_static") else "POST", path, data, headers)
    assert got == status and set(body) == {"error"}
    assert reason in body["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]


def test_no_upload_is_left_behind(server, song):
    request(server, "POST", "/api/tag", song.read_bytes(), {"Content-Type": "audio/mpeg"})
    request(server, "POST", "/api/tag?filename=x.mp3", b"junk" * 100)
    (upload_dir,) = Path(server[2]).glob("tagstack-serve-*")
    assert [p.name for p in upload_dir.iterdir()] == [".lock"]  # held while the server lives (service/uploads.py)


@pytest.mark.slow
def test_load_with_bad_files_mixed_in(server):
    """500 requests at 16 concurrent clients, one in ten a bad file: no good one fails, every bad one is a 4xx, memory stays flat."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_serve.py"),
            "--url",
            f"http://{server[0]}",
            "--requests",
            "500",
            "--concurrency",
            "16",
            "--bad-every",
            "10",
            "--seconds",
            "6",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["good"] == 450 and r["good_ok"] == 450, r["good_failed"]
    assert r["bad"] == 50 and r["bad_4xx"] == 50 and r["malformed_json"] == 0
    print(f"\nload: {r['requests_per_s']} requests/s, p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms")


@pytest.mark.slow
def test_memory_does_not_grow_under_load(server):
    def rss() -> float:
        return int(open(f"/proc/{server[1].pid}/status").read().split("VmRSS:")[1].split()[0]) / 1024

    cmd = [
        sys.executable,
        str(ROOT / "bench" / "bench_serve.py"),
        "--url",
        f"http://{server[0]}",
        "--requests",
        "200",
        "--concurrency",
        "16",
        "--bad-every",
        "7",
        "--seconds",
        "6",
        "--json",
    ]
    assert subprocess.run(cmd, capture_output=True, timeout=900).returncode == 0
    after_first = rss()
    for _ in range(2):
        assert subprocess.run(cmd, capture_output=True, timeout=900).returncode == 0
    assert rss() < after_first + 40, (after_first, rss())


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no Chromium installed (.ci/run installs Debian's)")
def test_the_page_in_a_real_browser(server, tmp_path):
    """Upload a generated file on the page: its tag bars and taggram appear, the console stays clean, nothing leaves the machine."""
    sync_api = pytest.importorskip("playwright.sync_api")
    clip = tmp_path / "drums and bass.wav"
    sf.write(clip, render({"low", "pulse"}, 40.0, np.random.default_rng(5)), SR)
    base = f"http://{server[0]}"
    problems, foreign = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith(base) else None)
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('model-line').textContent.startsWith('tiny')")
        assert "A randomly initialised test model" in page.inner_text("#card")
        page.set_input_files("#file", str(clip))
        page.wait_for_selector("#results:not([hidden])", timeout=60_000)
        assert page.inner_text("#result-name") == "drums and bass.wav"
        bars = page.query_selector_all("#bars li")
        assert len(bars) == 4  # the tiny model has 4 tags; the page asks for the top 10
        widths = page.eval_on_selector_all("#bars .bar", "els => els.map(e => parseFloat(e.style.width))")
        assert all(0 <= w <= 100 for w in widths) and widths == sorted(widths, reverse=True)
        painted = page.evaluate("""() => {
            const c = document.getElementById('taggram'), d = c.getContext('2d').getImageData(150, 0, c.width - 158, c.height - 28).data;
            const colours = new Set();
            for (let i = 0; i < d.length; i += 4 * 97) colours.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2] + ',' + d[i + 3]);
            return colours.size;
        }""")
        assert painted > 3  # cells of several probabilities, not a blank canvas
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert problems == [] and foreign == []


def test_the_event_loop_answers_while_files_are_tagged(server):
    """A slow analysis (a 45 s file, a taggram window every 0.1 s) runs in a worker thread; /api/health answers meanwhile."""
    import threading
    import time

    data = wav_bytes(render({"low", "pulse"}, 45.0, np.random.default_rng(9)))  # 2.0 MB, just under the limit
    finished = []
    slow = threading.Thread(
        target=lambda: finished.append(request(server, "POST", "/api/tag?taggram=true&hop=0.1", data, {"Content-Type": "audio/wav"}))
    )
    slow.start()
    time.sleep(0.5)
    started = time.perf_counter()
    assert request(server, "GET", "/api/health")[0] == 200
    answered = time.perf_counter() - started
    still_running = not finished
    slow.join()
    assert finished[0][0] == 200 and len(finished[0][1]["taggram"]["starts"]) > 350
    assert still_running and answered < 1.0


# ------------------------------------------------------------ stalled, slow, many and vanishing clients; signals


def raw_upload(address: str, declared: int, sent: bytes, path: str = "/api/tag?filename=x.wav") -> socket.socket:
    """A raw socket that declares ``declared`` bytes of body and sends ``sent`` of them, then nothing more."""
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: audio/wav\r\nContent-Length: {declared}\r\n\r\n".encode() + sent)
    return sock


def answer(sock: socket.socket) -> tuple[int, dict, float]:
    """The status and JSON body of the one response on ``sock``, read until the server closes it, and when it ended."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    ended = time.monotonic()
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), ended


def next_response(sock: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of the next response on a kept-alive ``sock`` (its Content-Length says where it ends)."""

    def more() -> bytes:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        return chunk

    data = b""
    while b"\r\n\r\n" not in data:
        data += more()
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += more()
    return int(head.split()[1]), json.loads(body[:length])


def uploads_in(tmp: Path) -> list[str]:
    return sorted(p.name for d in tmp.glob("tagstack-serve-*") for p in d.iterdir() if p.name != ".lock")


@pytest.fixture(scope="module")
def strict_server(model_file, tmp_path_factory):
    """A server with short limits: 2 s without a byte, 50 kB/s at least, 2 uploads at once, 2 s for a request's headers."""
    tmp = tmp_path_factory.mktemp("strict-tmp")
    port = free_port()
    proc = start_server(
        str(model_file),
        port,
        ["--device", "cpu", "--upload-timeout", "2", "--min-upload-kbps", "50", "--max-uploads", "2", "--header-timeout", "2"],
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    yield f"127.0.0.1:{port}", proc, tmp
    proc.terminate()
    proc.wait(timeout=30)


def test_a_stalled_upload_is_cut_off_and_its_file_removed(strict_server):
    """Declares 1 MB, sends 4 kB and stops: a 408 about two seconds later, the connection closed, no file left."""
    started = time.monotonic()
    sock = raw_upload(strict_server[0], 1_000_000, b"RIFF" + b"\0" * 4092)
    status, body, ended = answer(sock)
    assert status == 408 and body == {"error": "the upload stalled: no data for 2 s after 4096 bytes (--upload-timeout)"}
    assert 1.5 < ended - started < 10
    assert uploads_in(strict_server[2]) == []


def test_a_trickling_upload_is_cut_off_at_the_minimum_rate(strict_server):
    sock = raw_upload(strict_server[0], 1_000_000, b"RIFF")
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:  # 100 bytes every 0.3 s: never stalled, far under 50 kB/s
            sock.sendall(b"\0" * 100)
            time.sleep(0.3)
    except OSError:  # the server answered and closed
        pass
    status, body, _ = answer(sock)
    assert status == 408 and "the upload is too slow" in body["error"] and "50 kB/s (--min-upload-kbps)" in body["error"]
    assert uploads_in(strict_server[2]) == []


def test_a_client_trickling_its_headers_is_cut_off_and_others_are_served(strict_server):
    """Slowloris: a header line every 0.5 s never completes the request; uvicorn alone would hold it for ever.

    Cut off with a 408 about 2 s after the connection opened (--header-timeout 2); a kept-alive connection's second
    request gets its own 2 s from its first byte; a connection that sends nothing is closed quietly; the service
    answers everyone else meanwhile."""
    host, port = strict_server[0].split(":")

    def trickle(sock: socket.socket, first: bytes) -> float:
        started = time.monotonic()
        try:
            sock.sendall(first)
            for i in range(40):  # 20 s of headers unless the server cuts it off
                time.sleep(0.5)
                sock.sendall(f"X-Slow-{i}: a\r\n".encode())
        except OSError:  # closed by the server
            pass
        return started

    import threading

    sock = socket.create_connection((host, int(port)), timeout=30)
    begun = []
    slow = threading.Thread(target=lambda: begun.append(trickle(sock, f"GET /api/health HTTP/1.1\r\nHost: {host}\r\n".encode())))
    slow.start()
    time.sleep(0.5)
    assert slow.is_alive() and request(strict_server, "GET", "/api/health")[0] == 200  # served while the other trickles
    status, body, ended = answer(sock)
    slow.join()
    assert status == 408 and body == {"error": "the request's headers did not arrive within 2 s (--header-timeout)"}
    assert 1.5 < ended - begun[0] < 8

    kept = socket.create_connection((host, int(port)), timeout=30)
    kept.sendall(f"GET /api/health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    first = b""
    while not first.endswith(b"}"):  # the head, then a JSON body (the connection stays open)
        first += kept.recv(65536)
    assert first.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in first
    time.sleep(1.0)  # idle between requests: uvicorn's keep-alive time (5 s), not this deadline
    started = trickle(kept, f"GET /api/health HTTP/1.1\r\nHost: {host}\r\n".encode())
    status, body, ended = answer(kept)
    assert status == 408 and "--header-timeout" in body["error"] and 1.5 < ended - started < 8

    # a body still arriving after its request was answered early (a GET with a body, an error): no 408, it has its
    # answer; the body nobody reads is held to the upload limits, so trickling it does not hold the connection
    early = socket.create_connection((host, int(port)), timeout=30)
    early.sendall(f"GET /api/health HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000000\r\n\r\nab".encode())
    head = b""
    while not head.endswith(b"}"):
        head += early.recv(65536)
    assert head.startswith(b"HTTP/1.1 200")
    begun.clear()
    slow = threading.Thread(target=lambda: begun.append(trickle(early, b"cd")))
    slow.start()
    rest = b""
    try:
        while chunk := early.recv(65536):
            rest += chunk
    except ConnectionResetError:
        pass
    ended = time.monotonic()
    slow.join()
    assert rest == b"" and 1.5 < ended - begun[0] < 8
    early.close()
    # ... while one sent at a fair rate (0.5 MB/s for 6 s, past every deadline and uvicorn's 5 s keep-alive) is read
    # to its end: the client that writes its whole body before it reads gets its answer, not a reset
    refused = socket.create_connection((host, int(port)), timeout=30)
    size = 3_000_000
    refused.sendall(f"POST /api/tag?top_k=-1 HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n\r\n".encode())
    for _ in range(size // 50_000):
        time.sleep(0.1)
        refused.sendall(b"\0" * 50_000)
    status, body = next_response(refused)
    assert status == 400 and "top_k must be a whole number >= 0" in body["error"]
    refused.sendall(f"GET /api/health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())  # the connection serves on
    assert next_response(refused) == (200, {"status": "ok", "model": "tiny", "device": "cpu"})
    refused.close()

    silent = socket.create_connection((host, int(port)), timeout=30)
    opened = time.monotonic()
    assert silent.recv(65536) == b""  # closed without a word
    assert 1.5 < time.monotonic() - opened < 8
    silent.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /api/tag HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /api/tag HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS to a plain-HTTP port
    ],
    ids=["content_length", "two_lengths", "header_name", "tls"],
)
def test_a_request_that_is_not_http_gets_a_400_and_one_json_line(server, raw):
    """uvicorn parses the request before any tagstack code runs, and answered these in plain text of its own."""
    host, port = server[0].split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(raw)
    status, body, _ = answer(sock)
    assert status == 400 and body == {"error": "not a valid HTTP request (Invalid HTTP request received)"}


def test_uploads_beyond_the_limit_get_a_503_at_once(strict_server, song):
    held = [raw_upload(strict_server[0], 1_000_000, b"RIFF") for _ in range(2)]
    time.sleep(0.3)
    status, body = request(strict_server, "POST", "/api/tag", song.read_bytes(), {"Content-Type": "audio/mpeg"})
    assert status == 503 and "holds 2 uploads at once (--max-uploads)" in body["error"]
    assert [answer(s)[0] for s in held] == [408, 408]
    assert request(strict_server, "POST", "/api/tag", song.read_bytes(), {"Content-Type": "audio/mpeg"})[0] == 200


@pytest.mark.slow
def test_sigterm_stops_the_server_within_its_deadline_and_a_vanished_client_is_one_line(model_file, tmp_path, song):
    """A client that disconnects mid-upload is one log line; SIGTERM while another upload stalls ends the server within
    --shutdown-timeout, its upload folder removed."""
    port = free_port()
    proc = start_server(
        str(model_file),
        port,
        ["--device", "cpu", "--upload-timeout", "600", "--shutdown-timeout", "2"],
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    address = f"127.0.0.1:{port}"
    try:
        gone = raw_upload(address, 1_000_000, song.read_bytes()[:8000])
        time.sleep(0.5)
        gone.close()
        stalled = raw_upload(address, 1_000_000, b"RIFF")
        time.sleep(0.5)
        assert len(uploads_in(tmp_path)) == 1
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.monotonic() - started < 8
        stalled.close()
    finally:
        proc.kill()
        err = proc.stderr.read()
    assert list(tmp_path.glob("tagstack-serve-*")) == []
    assert "Traceback" not in err
    (line,) = [l for l in err.splitlines() if "disconnected" in l]
    assert "disconnected during its upload to /api/tag; the partial upload was removed" in line


@pytest.mark.slow
def test_a_new_server_removes_the_uploads_a_killed_one_left(model_file, tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    first = start_server(str(model_file), free_port(), ["--device", "cpu"], env=env)
    port = free_port()
    second = start_server(str(model_file), port, ["--device", "cpu"], env=env)  # alive: its folder must stay
    try:
        sock = raw_upload(f"127.0.0.1:{first.args[first.args.index('--port') + 1]}", 1_000_000, b"RIFF" + b"\0" * 5000)
        time.sleep(0.5)
        assert len(uploads_in(tmp_path)) == 1
        first.send_signal(signal.SIGKILL)
        first.wait()
        sock.close()
        assert len(uploads_in(tmp_path)) == 1 and len(list(tmp_path.glob("tagstack-serve-*"))) == 2  # left behind
        third = start_server(str(model_file), free_port(), ["--device", "cpu"], env=env)
        third.terminate()
        third.wait(timeout=30)
        assert "removed 1 uploads that a stopped server left" in third.stderr.read()
        assert uploads_in(tmp_path) == [] and len(list(tmp_path.glob("tagstack-serve-*"))) == 1  # the second's, alive
        assert request((f"127.0.0.1:{port}",), "GET", "/api/health")[0] == 200
    finally:
        for p in (first, second):
            p.kill()
            p.wait()


def test_a_full_disk_is_a_507_and_a_vanished_upload_folder_is_made_again(model_file, full_disk, tmp_path):
    """No room for an upload: one JSON line (507), raw body or multipart, and the server serves again once there is
    room; its upload folder removed by a clean-up of /tmp: made again. A multipart upload is stored in --upload-dir
    only: with the system's temporary folder full, a 1.3 MB multipart upload (form parsers spool past 1 MB) is tagged."""
    mount, fill = full_disk
    audio = wav_bytes((render({"low"}, 30.0, np.random.default_rng(1)) * 32767).astype(np.int16), subtype="PCM_16")
    raw = ("/api/tag?filename=a.wav", audio, {"Content-Type": "audio/wav"})
    procs = []
    try:
        port = free_port()  # its uploads on the small disk
        procs.append(start_server(str(model_file), port, ["--device", "cpu", "--upload-dir", str(mount)]))
        on_small = (f"127.0.0.1:{port}",)
        port = free_port()  # its uploads elsewhere, the system's temporary folder on the small disk
        procs.append(
            start_server(
                str(model_file), port, ["--device", "cpu", "--upload-dir", str(tmp_path)], env={**os.environ, "TMPDIR": str(mount)}
            )
        )
        elsewhere = (f"127.0.0.1:{port}",)
        fill()
        assert request(elsewhere, "POST", "/api/tag", *multipart("a.wav", audio))[0] == 200
        for args in (raw, ("/api/tag", *multipart("a.wav", audio))):
            status, body = request(on_small, "POST", *args)
            assert status == 507 and body == {
                "error": "this service has no room to store the upload now (No space left on device); try again later"
            }
        (mount / "filler").unlink()
        assert request(on_small, "POST", *raw)[0] == 200
        for folder in mount.glob("tagstack-serve-*"):
            shutil.rmtree(folder)
        assert request(on_small, "POST", *raw)[0] == 200
        (folder,) = mount.glob("tagstack-serve-*")
        assert [p.name for p in folder.iterdir()] == [".lock"]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def test_a_client_that_goes_away_stops_its_analysis(model_file, tmp_path):
    """A client that uploads ten minutes of audio with a fine taggram (2000 windows) and leaves: its analysis ends
    at the next window and its upload is removed, instead of holding a worker to the end (a way to tie up a
    service: start long analyses and leave)."""
    port = free_port()
    proc = start_server(str(model_file), port, ["--device", "cpu", "--max-seconds", "700"], env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        data = wav_bytes((0.1 * np.sin(np.arange(8000 * 600) * 0.05) * 32767).astype(np.int16), sr=8000, subtype="PCM_16")
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(
            f"POST /api/tag?filename=a.wav&taggram=true&hop=0.3 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
        )
        time.sleep(2.0)  # received, and under analysis
        assert len(uploads_in(tmp_path)) == 1
        sock.close()
        for _ in range(12):  # the analysis alone takes several seconds more; stopped, it ends at once
            if not uploads_in(tmp_path):
                break
            time.sleep(0.25)
        assert uploads_in(tmp_path) == []
        assert request((f"127.0.0.1:{port}",), "GET", "/api/health")[0] == 200
    finally:
        proc.terminate()
        err = proc.communicate(timeout=60)[1]
    assert "a.wav: its client went away; its analysis was stopped" in err and "Traceback" not in err
