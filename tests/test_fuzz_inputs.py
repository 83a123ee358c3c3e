"""Generated hostile inputs (names, numbers, arrays, headers, bodies) against the CLI, the Python API and a real server.

Hypothesis draws what a hostile user, a careless one or a broken client
would send, and each test asserts the guarantees that must hold whatever
comes: the CLI answers with exit status 0, 1 or 2 and lines of text, never a
traceback, and what it writes is strict JSON; the API returns finite results
or raises a :class:`~tagstack.errors.TagstackError`, nothing else; the
service answers every request with one JSON object and a status under 500,
and is still up afterwards.
"""

import contextlib
import http.client
import io
import json
import math
import os
import socket
import sys
import tempfile
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from synth import SR, render  # noqa: E402
from tagstack.cli import main  # noqa: E402
from tagstack.errors import TagstackError  # noqa: E402
from tagstack.inference.tagger import Tagger  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

#: Numbers as people and programs mistype them.
number_text = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "-inf", "inf", "1e308", "1e-320", "0", "-0", "0x10", "1_000", " 5", "", "five"]),
    st.text(max_size=8),
)
#: File names as a filesystem may hold them: any bytes but '/' and NUL, up to past the 255-byte limit.
file_name = st.binary(min_size=1, max_size=300).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def wav_bytes():
    buf = io.BytesIO()
    sf.write(buf, render({"low", "pulse"}, 3.0, np.random.default_rng(0)), SR, format="WAV")
    return buf.getvalue()


@given(
    names=st.lists(file_name, min_size=1, max_size=3),
    content=st.sampled_from(["wav", "garbage", "empty"]),
    flag=st.sampled_from(["--top-k", "--threshold", "--hop", "--workers"]),
    value=number_text,
    fmt=st.sampled_from(["jsonl", "csv", "table"]),
)
@settings(max_examples=25, **SETTINGS)
def test_the_cli_answers_hostile_names_and_numbers_in_lines(model_file, wav_bytes, names, content, flag, value, fmt):
    with tempfile.TemporaryDirectory() as d:
        folder = os.fsencode(d)
        paths = []
        for name in names:
            path = folder + b"/" + name
            with contextlib.suppress(OSError):  # a name the filesystem refuses is still passed, as a user would
                with open(path, "wb") as f:
                    f.write({"wav": wav_bytes, "garbage": b"\x00garbage" * 50, "empty": b""}[content])
            paths.append(os.fsdecode(path))
        out = os.path.join(d, "out." + fmt)
        argv = [
            "tag",
            *paths,
            "--model",
            str(model_file),
            "--device",
            "cpu",
            "--format",
            fmt,
            "-o",
            out,
            "--taggram",
            os.path.join(d, "grams"),
            flag,
            value,
        ]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(argv)
        hypothesis.event(f"exit status {status}")
        assert status in (0, 1, 2)
        assert "Traceback" not in err.getvalue()
        if status == 2:  # a usage error: one line, before any work
            assert len(err.getvalue().strip().splitlines()) == 1 and not os.path.exists(out)
        if os.path.exists(out):
            text = open(out, encoding="utf-8").read()  # always valid UTF-8, whatever the names
            if fmt == "jsonl":
                for line in text.splitlines():
                    row = strict_json(line)
                    assert all(math.isfinite(p) for p in row["tags"].values())


shapes = st.one_of(
    st.tuples(st.integers(0, 6000)),
    st.tuples(st.integers(0, 3), st.integers(0, 3000)),
    st.tuples(st.integers(0, 3000), st.integers(0, 3)),
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
audio_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int16, np.int32, np.uint8, np.bool_, np.complex64]), shape=shapes
)


#: Audio that should tag: a second or so of samples in [-1, 1], mono or two channels either way round.
plain_audio = hnp.arrays(
    np.float32,
    st.one_of(st.tuples(st.integers(1000, 6000)), st.tuples(st.just(2), st.integers(1000, 3000))),
    elements=st.floats(-1, 1, width=32),
)


@given(
    y=st.one_of(plain_audio, audio_arrays, st.lists(st.floats(), max_size=3000), st.text(max_size=5), st.none(), st.integers()),
    sr=st.one_of(st.sampled_from([8000, 22050, 44100, 96000]), st.integers(-5, 10**7), st.floats(), st.none(), st.just(True)),
    hop=st.one_of(st.none(), st.floats(0.1, 40), st.floats(), st.integers(-3, 10**12)),
    top_k=st.one_of(st.none(), st.integers(0, 10), st.integers(-3, 10**12), st.floats()),
    threshold=st.one_of(st.none(), st.floats(0, 1), st.floats()),
)
@settings(max_examples=100, **SETTINGS)
def test_the_api_gives_finite_results_or_a_tagstack_error(tagger, y, sr, hop, top_k, threshold):
    try:
        gram, starts = tagger.taggram(y, sr=sr, hop=hop)
        tags = tagger.tag(y, sr=sr, top_k=top_k, threshold=threshold)
    except TagstackError as e:
        hypothesis.event(type(e).__name__)
        return
    hypothesis.event("tagged")
    assert np.isfinite(gram).all() and np.isfinite(starts).all()
    assert all(math.isfinite(p) and 0 <= p <= 1 for _, p in tags)


@pytest.fixture(scope="module")
def tagger(model_file):
    return Tagger(model_file, device="cpu")


# ------------------------------------------------------------ the service


@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_serve import free_port, start_server

    port = free_port()
    proc = start_server(
        str(model_file),
        port,
        ["--device", "cpu", "--max-upload-mb", "1", "--upload-timeout", "5"],
        env={**os.environ, "TMPDIR": str(tmp_path_factory.mktemp("fuzz-tmp"))},
    )
    yield port
    proc.terminate()
    proc.wait(timeout=30)


def ask(port: int, method: str, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, r.read()


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
params = st.dictionaries(
    st.sampled_from(["top_k", "threshold", "hop", "taggram", "embed", "scales", "layers", "per_group", "filename", "unknown"]),
    st.one_of(number_text, st.text(max_size=20), st.sampled_from(["true", "auto", "clip", "27,54", "1,2"])),
    max_size=5,
)


@given(
    query=params,
    content_type=st.one_of(
        st.none(), header_text, st.sampled_from(["audio/wav", "multipart/form-data", "multipart/form-data; boundary=x"])
    ),
    body=st.one_of(st.just("wav"), st.binary(max_size=2000)),
    method=st.sampled_from(["POST", "POST", "GET", "PUT"]),
    path=st.sampled_from(["/api/tag", "/api/tag", "/api/model", "/static/x.js", "/api/%00", "/../etc/passwd"]),
)
@settings(max_examples=80, **SETTINGS)
def test_the_service_answers_every_request_with_one_json_line_under_500(server, wav_bytes, query, content_type, body, method, path):
    data = wav_bytes if body == "wav" else body
    headers = {"Content-Type": content_type} if content_type is not None else {}
    url = path + ("?" + urllib.parse.urlencode(query) if query else "")
    status, raw = ask(server, method, url, data, headers)
    hypothesis.event(f"HTTP {status}")
    assert status < 500, raw
    if path == "/api/tag" or status >= 400:
        answer = strict_json(raw.decode("utf-8"))
        assert isinstance(answer, dict)
        if status >= 400:
            assert set(answer) == {"error"} and "\n" not in answer["error"]
        else:
            assert all(math.isfinite(t["probability"]) for t in answer["tags"])


@given(head=st.binary(max_size=400))
@settings(max_examples=40, **SETTINGS)
def test_garbage_on_the_wire_never_takes_the_service_down(server, head):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(head + b"\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            reply = sock.recv(65536)
            if reply.startswith(b"HTTP/1.1 5"):
                pytest.fail(f"a 5xx for {head!r}: {reply[:200]!r}")
    assert ask(server, "GET", "/api/health", b"", {})[0] == 200
