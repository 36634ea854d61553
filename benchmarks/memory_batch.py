"""Server memory (RSS) during the largest batches the limits allow; a fresh server per case.

Usage (from the repository root)::

    .venv/bin/python benchmarks/memory_batch.py                       # every case
    .venv/bin/python benchmarks/memory_batch.py batch_10x40Mpx_png    # one case

Each case starts ``sketchreid serve`` (SQLite, default limits, ``DECODE_MEMORY_MB`` 640) with a
throw-away data folder,
sends a warm-up batch of two crops, then samples the server's VmRSS every 5 ms while the case
runs. Printed per case: the answer, the RSS before, the peak rise and the rise after.
The test images are made once into ``$SKETCHREID_MEMBENCH_CACHE`` (default
``/tmp/sketchreid-membench``, about 600 MB). Recorded in docs/reliability.md.
"""

import contextlib
import io
import json
import os
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import Server, temp_database

ROOT = Path(__file__).resolve().parents[1]

MB = 1048576
CACHE = Path(os.environ.get("SKETCHREID_MEMBENCH_CACHE", "/tmp/sketchreid-membench"))


def cached(name, make):
    CACHE.mkdir(parents=True, exist_ok=True)
    p = CACHE / name
    if not p.exists():
        p.write_bytes(make())
    return p.read_bytes()


def big_jpeg(i):  # ~19.6 MB of noise at quality 100, 3200x3100 (decoded with draft mode)
    def make():
        a = np.random.default_rng(i).integers(0, 256, (3100, 3200, 3), dtype=np.uint8)
        b = io.BytesIO()
        Image.fromarray(a).save(b, "JPEG", quality=100)
        return b.getvalue()

    return cached(f"big{i}.jpg", make)


def mid_jpeg(i):  # ~2 MB
    def make():
        a = np.random.default_rng(1000 + i).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
        b = io.BytesIO()
        Image.fromarray(a).save(b, "JPEG", quality=100)
        return b.getvalue()

    return cached(f"mid{i}.jpg", make)


def huge_png(
    i,
):  # 6324x6324 RGBA = 39.99 Mpx (< MAX_IMAGE_PIXELS 40M): 160 MB decoded, no draft for PNG
    def make():
        a = np.zeros((6324, 6324, 4), np.uint8)
        a[0, :8] = np.random.default_rng(i).integers(0, 256, (8, 4))
        b = io.BytesIO()
        Image.fromarray(a, "RGBA").save(b, "PNG", compress_level=1)
        return b.getvalue()

    return cached(f"huge{i}.png", make)


SIDE_40MPX = 6324  # 6324 x 6324 = 39.99 Mpx, under MAX_IMAGE_PIXELS (40 M)


def grey16_png(i):  # 16-bit grey, 40 Mpx, ~80 KB: 80 MB decoded
    def make():
        a = np.zeros((SIDE_40MPX, SIDE_40MPX), np.uint16)
        a[0, :8] = np.random.default_rng(i).integers(256, 65535, 8)
        b = io.BytesIO()
        Image.fromarray(a).save(b, "PNG", compress_level=9)
        return b.getvalue()

    return cached(f"grey16-{i}.png", make)


def float_tiff(i):  # float32 grey, 40 Mpx, deflate, ~250 KB: 160 MB decoded
    def make():
        a = np.zeros((SIDE_40MPX, SIDE_40MPX), np.float32)
        a[0, :8] = np.random.default_rng(i).random(8)
        b = io.BytesIO()
        Image.fromarray(a, "F").save(b, "TIFF", compression="tiff_adobe_deflate")
        return b.getvalue()

    return cached(f"float-{i}.tif", make)


def palette_png(i):  # palette with partial transparency (tRNS), 40 Mpx, ~40 KB
    def make():
        im = Image.new("P", (SIDE_40MPX, SIDE_40MPX), 0)
        im.putpalette([255, 0, 0, 0, 255, 0, *np.random.default_rng(i).integers(0, 256, 3)])
        im.paste(1, (0, 0, 100, 100))
        b = io.BytesIO()
        im.save(b, "PNG", transparency=bytes([128, 255]), compress_level=9)
        return b.getvalue()

    return cached(f"palette-{i}.png", make)


def rss_tree(pid):
    total = 0
    pids = [pid]
    try:
        for t in Path(f"/proc/{pid}/task").iterdir():
            ch = (t / "children").read_text().split()
            pids += [int(c) for c in ch]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class Sampler:
    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, False
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, rss_tree(self.pid))
            time.sleep(0.005)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop = True
        self.t.join()


def post_batch(base, key, files):
    parts = [("images", (f"f{i}", data, ctype)) for i, (data, ctype) in enumerate(files)]
    with httpx.Client(base_url=base, timeout=1800) as c:
        r = c.post("/api/v1/gallery/batch", files=parts, headers={"X-API-Key": key})
    try:
        j = r.json()
        summ = (
            {k: j.get(k) for k in ("created", "existing", "failed")}
            if r.status_code == 200
            else j.get("detail")
        )
    except ValueError:
        summ = r.text[:200]
    return r.status_code, summ


def post_single(base, key, data, ctype):
    with httpx.Client(base_url=base, timeout=1800) as c:
        r = c.post(
            "/api/v1/gallery", files={"image": ("x", data, ctype)}, headers={"X-API-Key": key}
        )
    return r.status_code, (r.json().get("detail") if r.status_code >= 400 else "ok")


def post_search(base, key, data, ctype):
    with httpx.Client(base_url=base, timeout=1800) as c:
        r = c.post(
            "/api/v1/search", files={"sketch": ("x", data, ctype)}, headers={"X-API-Key": key}
        )
    return r.status_code, (r.json().get("detail") if r.status_code >= 400 else "ok")


def declared_2gb(port, key):
    """100 x 20 MB: headers declaring a 2 GB multipart body, then the first MB of it."""
    s = socket.create_connection(("127.0.0.1", port))
    n = 100 * 20 * MB + 100 * 200
    s.sendall(
        (
            f"POST /api/v1/gallery/batch HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {n}\r\n\r\n"
        ).encode()
    )
    with contextlib.suppress(OSError):
        s.sendall(
            b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n'
            + b"\xff" * MB
        )
    s.settimeout(60)
    resp = s.recv(4096).decode(errors="replace")
    s.close()
    return resp.split("\r\n", 1)[0] + " " + resp.rsplit("\r\n", 1)[-1][:160]


def chunked_2gb(base, key):
    """100 x 20 MB streamed without a Content-Length (chunked): counted while it streams."""
    sent = [0]

    def gen():
        yield b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n'
        chunk = b"\xff" * MB
        for _ in range(2000):
            sent[0] += len(chunk)
            yield chunk

    try:
        with httpx.Client(base_url=base, timeout=600) as c:
            r = c.post(
                "/api/v1/gallery/batch",
                content=gen(),
                headers={"X-API-Key": key, "Content-Type": "multipart/form-data; boundary=b"},
            )
        return f"{r.status_code} {r.text[:160]} (client had sent {sent[0] / MB:.0f} MB)"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__} after the client sent {sent[0] / MB:.0f} MB"


CASES = {}


def case(f):
    CASES[f.__name__] = f
    return f


@case
def refuse_100x20MB_declared(s, key):
    return declared_2gb(s.port, key)


@case
def refuse_100x20MB_chunked(s, key):
    return chunked_2gb(s.base_url, key)


@case
def batch_10x19_6MB_jpeg(s, key):
    return post_batch(s.base_url, key, [(big_jpeg(i), "image/jpeg") for i in range(10)])


@case
def batch_100x2MB_jpeg(s, key):
    return post_batch(s.base_url, key, [(mid_jpeg(i), "image/jpeg") for i in range(100)])


@case
def batch_10x40Mpx_png(s, key):
    return post_batch(s.base_url, key, [(huge_png(i), "image/png") for i in range(10)])


@case
def three_concurrent_batches_10x19_6MB(s, key):
    files = [[(big_jpeg(10 * b + i), "image/jpeg") for i in range(10)] for b in range(3)]
    with ThreadPoolExecutor(3) as ex:
        futs = [ex.submit(post_batch, s.base_url, key, f) for f in files]
        return [f.result() for f in futs]


@case
def three_concurrent_batches_10x40Mpx_png(s, key):
    files = [[(huge_png(10 * b + i), "image/png") for i in range(10)] for b in range(3)]
    with ThreadPoolExecutor(3) as ex:
        futs = [ex.submit(post_batch, s.base_url, key, f) for f in files]
        return [f.result() for f in futs]


@case
def eight_concurrent_singles_40Mpx_png(s, key):
    with ThreadPoolExecutor(8) as ex:
        futs = [
            ex.submit(post_single, s.base_url, key, huge_png(100 + i), "image/png")
            for i in range(8)
        ]
        return [f.result() for f in futs]


@case
def single_grey16_40Mpx_png(s, key):
    return post_single(s.base_url, key, grey16_png(0), "image/png")


@case
def single_float32_40Mpx_tiff(s, key):
    return post_single(s.base_url, key, float_tiff(0), "image/tiff")


@case
def single_palette_transparency_40Mpx_png(s, key):
    return post_single(s.base_url, key, palette_png(0), "image/png")


@case
def six_concurrent_singles_grey16_40Mpx_png(s, key):
    with ThreadPoolExecutor(6) as ex:
        futs = [
            ex.submit(post_single, s.base_url, key, grey16_png(10 + i), "image/png")
            for i in range(6)
        ]
        return [f.result() for f in futs]


@case
def twenty_concurrent_singles_40Mpx_png(s, key):
    with ThreadPoolExecutor(20) as ex:
        futs = [
            ex.submit(post_single, s.base_url, key, huge_png(200 + i), "image/png")
            for i in range(20)
        ]
        return [f.result() for f in futs]


@case
def twenty_concurrent_searches_40Mpx_png(s, key):
    with ThreadPoolExecutor(20) as ex:
        futs = [
            ex.submit(post_search, s.base_url, key, huge_png(300 + i), "image/png")
            for i in range(20)
        ]
        return [f.result() for f in futs]


def main():
    kind = "sqlite"
    wanted = sys.argv[1:] or list(CASES)
    unknown = [w for w in wanted if w not in CASES]
    if unknown:
        print(__doc__)
        print("cases:", " ".join(CASES))
        return
    out = {}
    for name in wanted:
        with tempfile.TemporaryDirectory() as tmp, temp_database(kind, Path(tmp)) as url:
            s = Server(Path(tmp) / "data", url, ROOT / "model_store/default")
            s.migrate()
            # admin: uploads (operator) and searches (investigator) with one key
            key = s.create_key("admin")
            s.start()
            try:
                # warm up: one small batch and one single upload
                post_batch(s.base_url, key, [(mid_jpeg(900 + i), "image/jpeg") for i in range(2)])
                time.sleep(1)
                base = rss_tree(s.process.pid)
                t0 = time.monotonic()
                with Sampler(s.process.pid) as smp:
                    result = CASES[name](s, key)
                secs = time.monotonic() - t0
                time.sleep(1)
                after = rss_tree(s.process.pid)
                out[name] = dict(
                    result=result,
                    rss_before_mb=round(base / MB),
                    peak_rise_mb=round((smp.peak - base) / MB),
                    after_rise_mb=round((after - base) / MB),
                    seconds=round(secs, 1),
                )
                print(name, json.dumps(out[name]), flush=True)
            finally:
                s.stop()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
