"""Watchlists and alerts (issue 23): a search kept standing scores every crop indexed after it;
a crop at the threshold raises an alert (stored, audited, listed, acknowledged) and is POSTed to
the webhook without holding up the upload.

A watchlist's score is checked against the score a search refining the same search gives the
crop (``refine``: the same sketches, feedback and marks through ``run_search``), so a
watchlist that scored against another query, or ignored the marks, fails."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.config import Settings
from app.ml.bundle.store import Bundle

from .conftest import Keys, snapshot, upload
from .helpers import jpeg, png, sketch_png


def _fill(client: TestClient, keys: Keys, n: int = 8) -> list[int]:
    ids = []
    for seed in range(n):
        r: Any = upload(client, keys.operator, jpeg(seed), camera_id=f"c{seed % 2 + 1}")
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def _same_pixels(client: TestClient, keys: Keys, gallery_id: int) -> bytes:
    """Another file (other bytes, other sha256) with the same pixels as a gallery crop."""
    data = client.get(f"/api/v1/gallery/{gallery_id}/image", headers=keys.operator).content
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _post(client: TestClient, keys: Keys, data: bytes, camera: str = "c1") -> int:
    r = client.post(
        "/api/v1/gallery",
        files={"image": ("new.png", data, "image/png")},
        data={"camera_id": camera},
        headers=keys.operator,
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _marked_search(client: TestClient, keys: Keys, *, mark: bool = True) -> tuple[str, int]:
    r = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(3), "image/png")},
        data={"top_k": "5", "rerank": "false"},
        headers=keys.investigator,
    )
    assert r.status_code == 200, r.text
    sid, top = r.json()["search_id"], r.json()["results"][0]["gallery_id"]
    if mark:
        body = {"gallery_id": top, "mark": "confirmed"}
        r = client.post(f"/api/v1/searches/{sid}/marks", json=body, headers=keys.investigator)
        assert r.status_code == 201, r.text
    return sid, top


def _refined_scores(client: TestClient, keys: Keys, sid: str) -> dict[int, float]:
    """Each crop's score for the search's query as it stands (sketches, feedback, marks)."""
    r = client.post(
        "/api/v1/search",
        data={"refine": sid, "top_k": "100", "rerank": "false"},
        headers=keys.investigator,
    )
    assert r.status_code == 200, r.text
    return {x["gallery_id"]: x["score"] for x in r.json()["results"]}


def _alerts(client: TestClient, headers: dict[str, str], **query: str) -> dict[str, Any]:
    r = client.get("/api/v1/alerts", params=query, headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_new_crop_at_the_threshold_raises_an_alert_and_others_do_not(
    client: TestClient, keys: Keys
) -> None:
    _fill(client, keys)
    sid, confirmed = _marked_search(client, keys)
    r = client.post(
        "/api/v1/watchlists", json={"search_id": sid, "min_score": 0.0}, headers=keys.investigator
    )
    assert r.status_code == 201, r.text
    best = {b["gallery_id"]: b["score"] for b in r.json()["best_now"]}
    assert confirmed in best  # the query moved towards the confirmed crop
    threshold = best[confirmed] - 1e-4
    client.delete(f"/api/v1/watchlists/{r.json()['id']}", headers=keys.investigator)
    r = client.post(
        "/api/v1/watchlists",
        json={"search_id": sid, "min_score": threshold, "name": "suspect 1"},
        headers=keys.investigator,
    )
    assert r.status_code == 201, r.text
    watch = r.json()
    assert watch["status"] == "active" and watch["alerts"] == 0
    assert _alerts(client, keys.investigator)["total"] == 0  # crops already there raise none

    twin = _post(client, keys, _same_pixels(client, keys, confirmed))
    others = [_post(client, keys, png(500 + s)) for s in range(6)]
    scores = _refined_scores(client, keys, sid)
    expected = {i for i in [twin, *others] if scores[i] >= threshold}
    assert twin in expected

    page = _alerts(client, keys.investigator)
    assert {a["gallery_id"] for a in page["items"]} == expected
    assert page["open"] == len(expected)
    for alert in page["items"]:
        assert alert["score"] == pytest.approx(scores[alert["gallery_id"]], abs=1e-4)
        assert alert["watchlist_name"] == "suspect 1" and alert["item"]["camera_id"] == "c1"
        assert alert["acknowledged_at"] is None

    # Acknowledged: no longer open; audited with who.
    first = page["items"][0]["id"]
    r = client.post(f"/api/v1/alerts/{first}/ack", headers=keys.investigator)
    assert r.status_code == 200 and r.json()["acknowledged_at"] is not None
    assert _alerts(client, keys.investigator, status="open")["total"] == len(expected) - 1
    assert client.post(f"/api/v1/alerts/{first}/ack", headers=keys.investigator2).status_code == 404
    audit = client.get("/api/v1/audit", headers=keys.admin).json()["items"]
    actions = [e["action"] for e in audit]
    assert actions.count("alert.raise") == len(expected) and actions.count("alert.ack") == 1
    raised = [e for e in audit if e["action"] == "alert.raise"]
    assert {e["gallery_id"] for e in raised} == expected


def test_cameras_pause_and_delete(client: TestClient, keys: Keys) -> None:
    _fill(client, keys)
    sid, _ = _marked_search(client, keys)
    elsewhere = client.post(
        "/api/v1/watchlists",
        json={"search_id": sid, "min_score": -1.0, "camera_ids": ["c9"]},
        headers=keys.investigator,
    ).json()
    everywhere = client.post(
        "/api/v1/watchlists", json={"search_id": sid, "min_score": -1.0}, headers=keys.investigator
    ).json()
    first = _post(client, keys, png(600), camera="c1")
    page = _alerts(client, keys.investigator)
    assert [(a["watchlist_id"], a["gallery_id"]) for a in page["items"]] == [
        (everywhere["id"], first)
    ]

    r = client.patch(
        f"/api/v1/watchlists/{everywhere['id']}",
        json={"status": "paused"},
        headers=keys.investigator,
    )
    assert r.status_code == 200 and r.json()["status"] == "paused"
    _post(client, keys, png(601), camera="c1")
    assert _alerts(client, keys.investigator)["total"] == 1  # paused: nothing new
    client.patch(
        f"/api/v1/watchlists/{everywhere['id']}",
        json={"status": "active"},
        headers=keys.investigator,
    )
    third = _post(client, keys, png(602), camera="c9")
    got = {
        (a["watchlist_id"], a["gallery_id"]) for a in _alerts(client, keys.investigator)["items"]
    }
    assert got == {(everywhere["id"], first), (everywhere["id"], third), (elsewhere["id"], third)}

    listed = client.get("/api/v1/watchlists", headers=keys.investigator).json()["items"]
    assert {w["id"]: w["alerts"] for w in listed} == {everywhere["id"]: 2, elsewhere["id"]: 1}
    assert client.get("/api/v1/watchlists", headers=keys.investigator2).json()["items"] == []
    assert len(client.get("/api/v1/watchlists", headers=keys.admin).json()["items"]) == 2
    assert (
        client.delete(
            f"/api/v1/watchlists/{everywhere['id']}", headers=keys.investigator2
        ).status_code
        == 404
    )
    assert (
        client.delete(
            f"/api/v1/watchlists/{everywhere['id']}", headers=keys.investigator
        ).status_code
        == 204
    )
    assert _alerts(client, keys.investigator)["total"] == 1
    audit = [e["action"] for e in client.get("/api/v1/audit", headers=keys.admin).json()["items"]]
    assert audit.count("watchlist.create") == 2 and audit.count("watchlist.update") == 2
    assert audit.count("watchlist.delete") == 1


def test_a_rank_threshold_alerts_on_crops_among_the_first_n(client: TestClient, keys: Keys) -> None:
    ids = _fill(client, keys)
    sid, _ = _marked_search(client, keys, mark=False)
    top2 = client.post(
        "/api/v1/watchlists", json={"search_id": sid, "max_rank": 2}, headers=keys.investigator
    ).json()
    anywhere = client.post(
        "/api/v1/watchlists",
        json={"search_id": sid, "max_rank": 50},
        headers=keys.investigator,
    ).json()
    # The search's best crop, again: first (or tied first) for the query; then strangers.
    new = [_post(client, keys, _same_pixels(client, keys, ids[0]))]
    new += [_post(client, keys, png(700 + s)) for s in range(5)]
    scores = _refined_scores(client, keys, sid)
    # Its rank when it was indexed: 1 + the crops then in the gallery that scored higher.
    present = list(ids)
    expected: dict[int, int] = {}
    for crop in new:
        present.append(crop)
        expected[crop] = 1 + sum(scores[other] > scores[crop] + 1e-6 for other in present)
    got: dict[int, dict[int, int]] = {top2["id"]: {}, anywhere["id"]: {}}
    for a in _alerts(client, keys.investigator, limit="200")["items"]:
        got[a["watchlist_id"]][a["gallery_id"]] = a["rank"]
    assert got[anywhere["id"]] == expected
    assert got[top2["id"]] == {c: r for c, r in expected.items() if r <= 2}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({}, 422, "min_score"),
        ({"min_score": 1.5}, 422, "min_score"),
        ({"max_rank": 0}, 422, "max_rank"),
        ({"min_score": 0.5, "camera_ids": ["a\u0000"]}, 400, "NUL"),
        ({"min_score": 0.5, "case_id": 999}, 404, "case 999"),
        ({"min_score": 0.5, "name": " "}, 422, "name"),
    ],
)
def test_bad_watchlists_are_refused_and_nothing_is_written(
    client: TestClient, keys: Keys, body: dict[str, Any], status: int, words: str
) -> None:
    _fill(client, keys, 3)
    sid, _ = _marked_search(client, keys)
    before = client.get("/api/v1/audit", headers=keys.admin).json()["total"]
    r = client.post(
        "/api/v1/watchlists", json={"search_id": sid, **body}, headers=keys.investigator
    )
    assert r.status_code == status, r.text
    assert words in r.text
    assert client.get("/api/v1/watchlists", headers=keys.investigator).json()["items"] == []
    assert client.get("/api/v1/audit", headers=keys.admin).json()["total"] == before
    other = client.post(
        "/api/v1/watchlists", json={"search_id": sid, "min_score": 0.1}, headers=keys.investigator2
    )
    assert other.status_code == 404


class _Receiver:
    """A webhook receiver on 127.0.0.1: answers ``statuses`` in turn (then 204), and holds
    each request until ``gate`` is set."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.got: list[dict[str, Any]] = []
        self.tries = 0
        self.gate = threading.Event()
        self.delivered = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.gate.wait(30)
                outer.tries += 1
                status = outer.statuses.pop(0) if outer.statuses else 204
                if status < 300:
                    outer.got.append(json.loads(body))
                    outer.delivered.set()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver([500, 503])
    try:
        yield r
    finally:
        r.close()


def test_alerts_are_posted_to_the_webhook_with_retries_without_holding_the_upload(
    make_settings: Callable[..., Settings], bundle: Bundle, keys: Keys, receiver: _Receiver
) -> None:
    from app.api.main import create_app

    settings = make_settings(ALERT_WEBHOOK_URL=receiver.url, ALERT_WEBHOOK_BACKOFF_SECONDS=0.05)
    with TestClient(create_app(settings, bundle=bundle), raise_server_exceptions=False) as client:
        _fill(client, keys, 4)
        sid, _ = _marked_search(client, keys)
        watch = client.post(
            "/api/v1/watchlists",
            json={"search_id": sid, "min_score": -1.0, "name": "W"},
            headers=keys.investigator,
        ).json()
        # The receiver holds every request: the upload is answered all the same.
        crop = _post(client, keys, png(800))
        assert not receiver.delivered.is_set() and receiver.tries == 0
        receiver.gate.set()
        assert receiver.delivered.wait(30), "the alert never reached the webhook"
        # What an operator's monitoring reads: one alert delivered, none failed or waiting.
        # (the receiver has the alert a moment before the sender has its answer)
        delivered = 'sketchreid_alert_webhook_alerts{outcome="delivered"} 1.0'
        for _ in range(100):
            metrics = client.get("/metrics").text
            if delivered in metrics:
                break
            time.sleep(0.05)
        assert delivered in metrics, metrics
        assert 'sketchreid_alert_webhook_alerts{outcome="failed"} 0.0' in metrics
        assert 'sketchreid_alert_webhook_alerts{outcome="waiting"} 0.0' in metrics
    assert receiver.tries == 3  # 500, 503, then accepted
    [payload] = receiver.got
    alert = payload
    assert alert["gallery_id"] == crop and alert["watchlist"] == {"id": watch["id"], "name": "W"}
    assert alert["camera_id"] == "c1" and len(alert["sha256"]) == 64
    assert isinstance(alert["score"], float)


def test_ingestion_goes_on_when_scoring_fails(client: TestClient, keys: Keys) -> None:
    _fill(client, keys, 3)
    sid, _ = _marked_search(client, keys)
    client.post(
        "/api/v1/watchlists", json={"search_id": sid, "min_score": -1.0}, headers=keys.investigator
    )
    ctx = client.app.state.ctx  # type: ignore[attr-defined]

    def broken(*_: Any) -> Any:
        raise RuntimeError("scoring broke")

    ctx.watcher._score = broken
    before = snapshot(client)
    crop = _post(client, keys, png(900))
    after = snapshot(client)
    assert after["items"] == before["items"] + 1 and crop in after["index"]  # type: ignore[operator]
    assert _alerts(client, keys.investigator)["total"] == 0


def test_the_workers_webhook_metric_is_read_at_each_scrape() -> None:
    """A worker's --metrics-port shows its notifier's counts as they are when scraped (the
    alert is sent after the task that raised it has ended)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from app.services.webhook import WebhookCollector, WebhookNotifier

    with socket.socket() as s:  # a port nobody listens on: every try fails
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notifier = WebhookNotifier(f"http://127.0.0.1:{port}/", attempts=2, backoff=0.01, timeout=1)
    registry = CollectorRegistry()
    registry.register(WebhookCollector(lambda: notifier))
    failed = 'sketchreid_alert_webhook_alerts{outcome="failed"}'
    assert f"{failed} 0.0" in generate_latest(registry).decode()
    assert notifier.send({"alert_id": 1})
    notifier.close()
    text = generate_latest(registry).decode()
    assert f"{failed} 1.0" in text
    assert 'sketchreid_alert_webhook_alerts{outcome="delivered"} 0.0' in text
