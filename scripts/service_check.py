"""The shipped bundle through the service itself: ingest every photo of a PKU-Sketch folder over
the HTTP API, search with every sketch, count how often its person is in the top k.

    .venv/bin/python scripts/service_check.py --model model_store/default \
        --data-root ../shared/data/pku-sketch-dev --json runs/service-check.json

Everything runs in-process (FastAPI ``TestClient``, a throw-away SQLite database and data
folder): `POST /api/v1/gallery` per photo (its file name as ``external_id``, its camera as
``camera_id``), then `POST /api/v1/search` per sketch with ``top_k`` results. On the
development folder this is a fit check for a bundle trained on those identities (it measures
that the service path ranks as evaluation does), not a measure of generalisation.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.api.main import create_app  # noqa: E402
from app.core.config import load_settings  # noqa: E402
from app.db import migrate  # noqa: E402
from app.db.session import session_scope  # noqa: E402
from app.ml.bundle.store import load_bundle  # noqa: E402
from app.ml.data.pku import load_pku_sketch  # noqa: E402
from app.services import apikeys  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="bundle folder")
    parser.add_argument("--data-root", type=Path, required=True, help="PKU-Sketch folder")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--rerank", action="store_true")
    parser.add_argument(
        "--view",
        action="append",
        choices=("sketch", "translated", "fused"),
        help="search in this query view (repeat to compare several over one ingested gallery; "
        "default: the bundle's own view)",
    )
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    dataset = load_pku_sketch(args.data_root)
    with_photo = {s.pid for s in dataset.photos}
    sketches = [s for s in dataset.sketches if s.pid in with_photo]
    bundle = load_bundle(args.model)
    with tempfile.TemporaryDirectory(prefix="service-check-") as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'check.db'}"
        migrate.upgrade(db_url)
        settings = load_settings(
            DATA_DIR=Path(tmp) / "data", DATABASE_URL=db_url, MODEL_DIR=args.model
        )
        with TestClient(create_app(settings, bundle=bundle)) as client:
            ctx = client.app.state.ctx  # type: ignore[attr-defined]
            with session_scope(ctx.sessions) as session:
                _, op_key = apikeys.create_key(session, "check-op", "operator")
                _, inv_key = apikeys.create_key(session, "check-inv", "investigator")
            pid_of: dict[str, int] = {}
            for photo in dataset.photos:
                name = photo.path.relative_to(args.data_root).as_posix()
                kind = mimetypes.guess_type(photo.path.name)[0] or "application/octet-stream"
                r = client.post(
                    "/api/v1/gallery",
                    files={"image": (photo.path.name, photo.path.read_bytes(), kind)},
                    data={"external_id": name, "camera_id": f"c{photo.camid}"},
                    headers={"X-API-Key": op_key},
                )
                if r.status_code not in (200, 201):
                    raise SystemExit(f"ingesting {photo.path}: {r.status_code} {r.text}")
                pid_of[name] = photo.pid
            ranks_of: dict[str, list[int | None]] = {}
            timings_of: dict[str, list[dict[str, float]]] = {}
            for view in args.view or [None]:
                form = {"top_k": args.top_k, "rerank": str(args.rerank).lower()}
                if view:
                    form["view"] = view
                ranks: list[int | None] = []
                timings: list[dict[str, float]] = []
                for sk in sketches:
                    kind = mimetypes.guess_type(sk.path.name)[0] or "application/octet-stream"
                    r = client.post(
                        "/api/v1/search",
                        files={"sketch": (sk.path.name, sk.path.read_bytes(), kind)},
                        data=form,
                        headers={"X-API-Key": inv_key},
                    )
                    if r.status_code != 200:
                        raise SystemExit(f"searching {sk.path}: {r.status_code} {r.text}")
                    view = r.json()["view"]
                    timings.append(r.json()["timings_ms"])
                    hits = [
                        res["rank"]
                        for res in r.json()["results"]
                        if pid_of.get(res["external_id"]) == sk.pid
                    ]
                    ranks.append(min(hits) if hits else None)
                ranks_of[str(view)] = ranks
                timings_of[str(view)] = timings
    views = {
        view: {
            "queries": len(ranks),
            "rank1_hits": sum(1 for k in ranks if k == 1),
            "topk_hits": sum(1 for k in ranks if k is not None),
            # per-stage medians of the service's own timings_ms (this machine, as loaded)
            "timings_p50_ms": {
                stage: round(float(np.median([t[stage] for t in timings_of[view]])), 2)
                for stage in ("translate", "embed", "search")
            },
        }
        for view, ranks in ranks_of.items()
    }
    first = next(iter(views.values()))
    report = {
        "model": {"name": bundle.name, "version": bundle.version, "path": str(args.model)},
        "data_root": str(args.data_root),
        "gallery": len(pid_of),
        "queries": first["queries"],
        "top_k": args.top_k,
        "rerank": args.rerank,
        "view": next(iter(views)),
        "rank1_hits": first["rank1_hits"],
        "topk_hits": first["topk_hits"],
        "views": views,
        "command": " ".join(["scripts/service_check.py", *(argv or sys.argv[1:])]),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    for view, v in views.items():
        print(
            f"{bundle.name} {bundle.version}, view {view}: {len(pid_of)} photos ingested over "
            f"the API; of {v['queries']} sketches, {v['rank1_hits']} find their person first "
            f"and {v['topk_hits']} within the top {args.top_k}; p50 ms {v['timings_p50_ms']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
