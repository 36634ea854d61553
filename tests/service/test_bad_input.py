"""Every kind of bad upload gets a 4xx with a message and leaves nothing behind."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.api.main import create_app
from app.core.config import Settings
from app.ml.bundle.store import Bundle

from .conftest import Keys, snapshot, upload
from .helpers import encode, jpeg, person_image, sketch_png


def _png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims a huge image (valid CRC, so only the size is wrong)."""
    data = encode(Image.new("L", (8, 8)), "PNG")
    ihdr_start = 8 + 8  # signature, then length + type of the IHDR chunk
    body = struct.pack(">II", width, height) + data[ihdr_start + 8 : ihdr_start + 13]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return data[:ihdr_start] + body + crc + data[ihdr_start + 17 :]


def _truncated_jpeg() -> bytes:
    data = encode(person_image(5, (64, 128)), "JPEG", quality=95)
    return data[: len(data) * 2 // 3]


def _jpeg_cut_with_its_end_marker() -> bytes:
    """Half a JPEG with its EOI put back: Pillow decodes it, the lower half grey."""
    data = encode(person_image(6, (64, 128)), "JPEG", quality=95)
    return data[: len(data) // 2] + b"\xff\xd9"


def _jpeg_header_larger_than_its_data() -> bytes:
    """16×16 of JPEG data under a frame header that says 6000×6000."""
    data = bytearray(encode(person_image(7, (16, 16)), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 6000, 6000)
    return bytes(data)


BAD_FILES: dict[str, tuple[Callable[[], bytes], str]] = {
    "zero-bytes": (lambda: b"", "empty"),
    "not-an-image": (lambda: b"just some text, not a picture\n" * 10, "not an image"),
    "truncated-jpeg": (_truncated_jpeg, "truncated"),
    "jpeg-cut-with-its-end-marker": (_jpeg_cut_with_its_end_marker, "truncated JPEG: its scan"),
    "jpeg-header-larger-than-its-data": (
        _jpeg_header_larger_than_its_data,
        "truncated JPEG: its scan data ends before the 6000×6000 image",
    ),
    "unsupported-format": (
        lambda: encode(person_image(1), "PPM"),
        "unsupported image format PPM",
    ),
    "decompression-bomb": (_png_bomb, "more than the limit"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_upload_is_rejected_and_leaves_nothing(
    client: TestClient, keys: Keys, kind: str
) -> None:
    assert upload(client, keys.operator, jpeg(1)).status_code == 201
    before = snapshot(client)
    make, needle = BAD_FILES[kind]
    r = upload(client, keys.operator, make())
    assert r.status_code == 400, r.text
    assert needle in r.json()["detail"]
    assert snapshot(client) == before


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_sketch_is_rejected_and_leaves_nothing(
    client: TestClient, keys: Keys, kind: str
) -> None:
    assert upload(client, keys.operator, jpeg(1)).status_code == 201
    before = snapshot(client)
    make, needle = BAD_FILES[kind]
    r = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", make(), "image/png")},
        headers=keys.investigator,
    )
    assert r.status_code == 400, r.text
    assert needle in r.json()["detail"]
    assert snapshot(client) == before


def test_broken_jpegs_in_a_batch_fail_alone(client: TestClient, keys: Keys) -> None:
    before = snapshot(client)
    r = client.post(
        "/api/v1/gallery/batch",
        files=[
            ("images", ("cut.jpg", _jpeg_cut_with_its_end_marker(), "image/jpeg")),
            ("images", ("ok.jpg", jpeg(1), "image/jpeg")),
            ("images", ("big.jpg", _jpeg_header_larger_than_its_data(), "image/jpeg")),
        ],
        headers=keys.operator,
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["http_status"] for x in results] == [400, 201, 400]
    assert results[0]["error"].startswith("cut.jpg: truncated JPEG: its scan data ends")
    assert "6000×6000" in results[2]["error"]
    after = snapshot(client)
    assert after["items"] == before["items"] + 1 and after["index"] == [results[1]["item"]["id"]]
    assert len(after["blobs"]) == 1


def _small_limit_client(
    make_settings: Callable[..., Settings], bundle: Bundle, **overrides: Any
) -> TestClient:
    return TestClient(create_app(make_settings(**overrides), bundle=bundle))


def test_upload_over_the_limit_is_413(
    make_settings: Callable[..., Settings], bundle: Bundle, keys: Keys
) -> None:
    big = encode(person_image(3, (400, 800)), "PNG")  # ~1 MB of noise
    assert len(big) > 100_000
    with _small_limit_client(make_settings, bundle, MAX_UPLOAD_MB=0.05) as client:
        before = snapshot(client)
        # The per-file check (body within the request cap, file over MAX_UPLOAD_MB).
        r = upload(client, keys.operator, big)
        assert r.status_code == 413 and "limit" in r.json()["detail"], r.text
        r = client.post(
            "/api/v1/search",
            files={"sketch": ("s.png", big, "image/png")},
            headers=keys.investigator,
        )
        assert r.status_code == 413
        batch = client.post(
            "/api/v1/gallery/batch",
            files=[
                ("images", ("big.png", big, "image/png")),
                ("images", ("ok.jpg", jpeg(1), "image/jpeg")),
            ],
            headers=keys.operator,
        )
        assert batch.status_code == 200
        assert [x["http_status"] for x in batch.json()["results"]] == [413, 201]
        assert snapshot(client)["items"] == before["items"] + 1


def test_request_body_cap_refuses_before_reading(
    make_settings: Callable[..., Settings], bundle: Bundle, keys: Keys
) -> None:
    huge = b"x" * (3 * 1024 * 1024)
    with _small_limit_client(make_settings, bundle, MAX_UPLOAD_MB=0.05) as client:
        before = snapshot(client)
        # Declared Content-Length over the cap: refused by the middleware up front.
        r = upload(client, keys.operator, huge)
        assert r.status_code == 413 and "request body" in r.json()["detail"]

        # Streamed without a length (chunked): refused once the cap is passed.
        def chunks() -> Any:
            yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
            for _ in range(48):
                yield b"y" * 65536
            yield b"\r\n--b--\r\n"

        r = client.post(
            "/api/v1/gallery",
            content=chunks(),
            headers={**keys.operator, "content-type": "multipart/form-data; boundary=b"},
        )
        assert r.status_code == 413, r.text
        assert snapshot(client) == before


def test_large_dimensions_are_downscaled_not_refused(client: TestClient, keys: Keys) -> None:
    r = upload(client, keys.operator, encode(person_image(2, (1500, 3000)), "JPEG"))
    assert r.status_code == 201
    assert (r.json()["width"], r.json()["height"]) == (1500, 3000)


def test_bad_form_fields(client: TestClient, keys: Keys) -> None:
    before = snapshot(client)
    for form, needle in (
        ({"captured_at": "not a date"}, "ISO 8601"),
        ({"captured_at": "2024-05-01T13:45:00"}, "time zone"),
        ({"camera_id": "c" * 101}, "longer than 100"),
        ({"location": "a\x00b"}, "control characters"),
    ):
        r = upload(client, keys.operator, jpeg(1), **form)
        assert r.status_code == 400 and needle in r.json()["detail"], (form, r.text)
    r = client.post("/api/v1/gallery", data={"camera_id": "c1"}, headers=keys.operator)
    assert r.status_code == 422 and "image" in r.json()["detail"]
    assert snapshot(client) == before


@pytest.mark.parametrize(
    ("form", "status", "needle"),
    [
        ({"top_k": "0"}, 422, "top_k"),
        ({"top_k": "101"}, 422, "top_k"),
        ({"top_k": "ten"}, 422, "top_k"),
        ({"k1": "5", "k2": "6"}, 422, "k2"),  # a range error, like the others (docs)
        ({"lambda_value": "1.5"}, 422, "lambda_value"),
        ({"rerank": "maybe"}, 422, "rerank"),
        ({"captured_after": "2024-13-01T00:00:00Z"}, 400, "captured_after"),
        ({"captured_before": "2024-01-01T00:00:00"}, 400, "time zone"),
        (
            {"captured_after": "2024-02-01T00:00:00Z", "captured_before": "2024-01-01T00:00:00Z"},
            400,
            "earlier",
        ),
    ],
)
def test_bad_search_parameters(
    client: TestClient, keys: Keys, form: dict[str, str], status: int, needle: str
) -> None:
    before = snapshot(client)
    r = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(1), "image/png")},
        data=form,
        headers=keys.investigator,
    )
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]
    assert snapshot(client) == before
