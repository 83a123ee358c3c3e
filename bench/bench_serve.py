"""Load on ``tagstack serve``: requests per second, latency and memory under concurrent clients, bad files mixed in.

Starts a real server process on a loopback port (or uses ``--url``), then sends
``--requests`` uploads from ``--concurrency`` client threads, each on its own
keep-alive connection. Every ``--bad-every``-th upload is a bad file (text,
empty, truncated, NaN samples, an unsupported type), which must get a 4xx; every
other must get a 200. The server's resident memory is read from /proc after the
first tenth of the requests and at the end, to show whether it grows.

    python bench/bench_serve.py                       # shipped model, 30 s clips
    python bench/bench_serve.py --model m.safetensors --requests 500 --concurrency 16 --json
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import soundfile as sf


def good_files(n: int, seconds: float, sr: int = 22050) -> list[tuple[str, bytes]]:
    """``n`` distinct WAV and MP3 clips: chords over a noise floor, each with its own notes and level."""
    rng = np.random.default_rng(0)
    out = []
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        freqs = 110 * 2 ** (rng.integers(0, 36, 3) / 12)
        y = sum(np.sin(2 * np.pi * f * t) * np.exp(-(t % 0.5) * rng.uniform(1, 6)) for f in freqs) / 3
        y = (0.5 * y + 0.02 * rng.standard_normal(len(t))) * rng.uniform(0.3, 0.9)
        buf = io.BytesIO()
        fmt = "MP3" if i % 2 else "WAV"
        sf.write(buf, y.astype(np.float32), sr, format=fmt)
        out.append((f"good{i}.{fmt.lower()}", buf.getvalue()))
    return out


def bad_files(good_mp3: bytes, sr: int = 22050) -> list[tuple[str, bytes]]:
    """Uploads every server must refuse with a 4xx."""
    nan = io.BytesIO()
    y = np.zeros(sr, np.float32)
    y[100] = np.nan
    sf.write(nan, y, sr, format="WAV", subtype="FLOAT")
    return [
        ("notes.mp3", b"this is not audio\n" * 200),
        ("empty.wav", b""),
        ("truncated.mp3", good_mp3[:300]),
        ("nan.wav", nan.getvalue()),
        ("song.txt", b"ID3" + b"\0" * 500),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, port: int, extra: list[str], env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tagstack", "serve", "--port", str(port), *(["--model", model] if model else []), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/api/health")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not answer /api/health within 120 s")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load(url: str, uploads: list[tuple[str, bytes, bool]], concurrency: int, server_pid: int | None) -> dict:
    """Send every upload (name, bytes, is_good) once, ``concurrency`` at a time; statuses, latencies, memory."""
    parts = urlsplit(url)
    local = threading.local()  # one keep-alive connection per client thread
    rss: list[float] = []
    marks = {max(1, len(uploads) // 10)}

    def send(k: int) -> tuple[bool, int, float, str]:
        name, body, good = uploads[k]
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
        conn = local.conn
        started = time.perf_counter()
        try:
            conn.request("POST", f"/api/tag?top_k=5&filename={name}", body=body, headers={"Content-Type": "application/octet-stream"})
            r = conn.getresponse()
            text = r.read().decode("utf-8", "replace")
            status = r.status
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            local.conn = None
            status, text = 0, f"{type(e).__name__}: {e}"
        took = time.perf_counter() - started
        if server_pid and k + 1 in marks:
            rss.append(rss_mb(server_pid))
        return good, status, took, text

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(send, range(len(uploads))))
    wall = time.perf_counter() - started
    if server_pid:
        rss.append(rss_mb(server_pid))
    lat = np.array([t for good, s, t, _ in results if good and s == 200]) * 1000
    bad_answers = [s for good, s, _, _ in results if not good]
    failures = [(uploads[i][0], s, text[:200]) for i, (good, s, _, text) in enumerate(results) if good and s != 200]
    malformed = sum(1 for _, s, _, text in results if s != 0 and not _one_json_line(text))
    return {
        "requests": len(uploads),
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(uploads) / wall, 2),
        "good": int(sum(g for g, *_ in results)),
        "good_ok": int(len(lat)),
        "good_failed": failures[:10],
        "bad": len(bad_answers),
        "bad_4xx": int(sum(400 <= s < 500 for s in bad_answers)),
        "bad_statuses": sorted(set(bad_answers)),
        "malformed_json": malformed,
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1)}
        if len(lat)
        else None,
        "server_rss_mb": [round(x, 1) for x in rss],
    }


def _one_json_line(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="an already running service (default: start one on a free loopback port)")
    p.add_argument("--model", help="model for the started server (default: the shipped one)")
    p.add_argument("--requests", type=int, default=500, help="uploads to send (default: 500)")
    p.add_argument("--concurrency", type=int, default=16, help="client threads sending at once (default: 16)")
    p.add_argument("--bad-every", type=int, default=10, help="every N-th upload is a bad file (default: 10)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the good clips (default: 30)")
    p.add_argument("--server-args", default="", help="extra `tagstack serve` options for the started server, e.g. '--concurrency 2'")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    a = p.parse_args()

    goods = good_files(8, a.seconds)
    bads = bad_files(goods[1][1])
    uploads = []
    for k in range(a.requests):
        bad = bool(a.bad_every) and k % a.bad_every == a.bad_every - 1
        uploads.append((*(bads[(k // a.bad_every) % len(bads)] if bad else goods[k % len(goods)]), not bad))
    proc = None
    url = a.url
    if url is None:
        port = free_port()
        proc = start_server(a.model, port, a.server_args.split())
        url = f"http://127.0.0.1:{port}"
    try:
        load(url, uploads[: a.concurrency], a.concurrency, None)  # warm-up: first requests pay for lazy initialisation
        result = load(url, uploads, a.concurrency, proc.pid if proc else None)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    result["clip_seconds"] = a.seconds
    if a.json:
        print(json.dumps(result))
        return
    lat = result["latency_ms"] or {}
    print(
        f"{result['requests']} requests ({result['bad']} bad files) from {a.concurrency} clients, {a.seconds:g} s clips: "
        f"{result['requests_per_s']} requests/s, p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms (good requests)"
    )
    print(
        f"good answered 200: {result['good_ok']}/{result['good']}; bad answered 4xx: {result['bad_4xx']}/{result['bad']} "
        f"(statuses {result['bad_statuses']}); server memory {result['server_rss_mb']} MB (after 10%, at the end)"
    )


if __name__ == "__main__":
    main()
