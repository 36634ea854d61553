"""Fuzz the HTTP API with schemathesis, once per role, against a live server.

Usage (from the repository root)::

    .venv/bin/python benchmarks/fuzz_api.py                                # SQLite, 100/op
    .venv/bin/python benchmarks/fuzz_api.py --database postgres --max-examples 50
    .venv/bin/python benchmarks/fuzz_api.py --json runs/fuzz.json

A real ``sketchreid serve`` process (``--model``, default ``model_store/default``) on a free
port, with a throw-away data folder and database, a few stored crops and searches to aim at.
Then ``schemathesis run`` (all phases: examples, coverage, fuzzing, stateful; every check)
against its ``/openapi.json`` with an ``X-API-Key`` of each role in turn: investigator,
operator, admin, and last an admin pass over key revocation alone (it can revoke the key the
passes use). The service passes when schemathesis reports no failure and no error, no pass
lost its authentication, and the server's own ``/metrics`` count no 5xx response.

``tests/service/test_fuzz.py`` runs the same passes with few examples against an in-process
server; this script is the larger run recorded in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import httpx

# The sibling _server module, also when this file is loaded by path (tests/service/test_fuzz.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import Server, server_errors, temp_database

HERE = Path(__file__).resolve().parent
HOOKS = HERE / "fuzz_hooks.py"
REVOKE_PATH = "/api/v1/apikeys/{key_id}/revoke"  # POST only

# A schema-valid request may still be refused with 400 for what a schema cannot say: a file
# that is not a usable image, k2 > k1, a date that does not exist. 5xx is never acceptable.
CONFIG = """\
[generation]
database = "none"

# Stateful sequences with valid data only: in a negative sequence schemathesis 4.32 fills the
# "invalid" part from a link it inferred (GET /cameras' camera_id -> POST /gallery's) and then
# reports the now valid request as "schema-violating request accepted" (ST201, seen 2026-12-07).
# Invalid data is still sent by the coverage and fuzzing phases, operation by operation.
[phases.stateful.generation]
mode = "positive"

[checks]
positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

[dictionaries.gallery_ids]
values = {gallery_ids}

[dictionaries.search_ids]
values = {search_ids}

[parameters]
"path.item_id" = {{ dictionary = "gallery_ids", probability = 0.5 }}
"path.search_id" = {{ dictionary = "search_ids", probability = 0.5 }}
"""


def _load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_fuzz_hooks", HOOKS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class PassResult:
    """One ``schemathesis run`` and what its JSON report says."""

    name: str
    role: str
    generated: int
    exit_code: int
    failures: list[dict[str, object]]
    errors: list[object]
    warnings: dict[str, list[str]]
    seconds: float
    key_still_valid: bool
    output: str = field(repr=False)

    def problems(self) -> list[str]:
        found = [f"{f['code']} {f['title']}: {f['operations']}" for f in self.failures]
        found += [f"error: {e}" for e in self.errors]
        if not self.key_still_valid and self.name != "admin-revoke":  # that pass may revoke it
            found.append("the pass's key was refused after the pass: later cases tested nothing")
        return found


@dataclass
class Seed:
    gallery_ids: list[int]
    search_ids: list[str]


def seed_data(base_url: str, operator: str, investigator: str, *, items: int = 6) -> Seed:
    """Stored crops and searches whose ids the passes use half of the time."""
    hooks = _load_hooks()
    gallery_ids: list[int] = []
    search_ids: list[str] = []
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for i in range(items):
            data = hooks.image_bytes("JPEG", 1000 + i, 48, 96, False)
            r = client.post(
                "/api/v1/gallery",
                files={"image": (f"seed{i}.jpg", data, "image/jpeg")},
                data={"camera_id": f"c{i % 3}", "captured_at": f"2024-05-0{1 + i % 9}T12:00:00Z"},
                headers={"X-API-Key": operator},
            )
            r.raise_for_status()
            gallery_ids.append(int(r.json()["id"]))
        for i in range(2):
            data = hooks.image_bytes("PNG", 2000 + i, 48, 96, True)
            r = client.post(
                "/api/v1/search",
                files={"sketch": ("sketch.png", data, "image/png")},
                data={"top_k": "3", "rerank": "true" if i else "false"},
                headers={"X-API-Key": investigator},
            )
            r.raise_for_status()
            search_ids.append(str(r.json()["search_id"]))
    return Seed(gallery_ids, search_ids)


def write_config(path: Path, seed: Seed) -> Path:
    ids = {"gallery_ids": json.dumps(seed.gallery_ids), "search_ids": json.dumps(seed.search_ids)}
    path.write_text(CONFIG.format(**ids))
    return path


def run_pass(
    base_url: str,
    key: str,
    *,
    name: str,
    role: str,
    config: Path,
    workdir: Path,
    max_examples: int,
    seed: int,
    workers: int = 1,
    filters: Sequence[str] = (),
) -> PassResult:
    """``schemathesis run`` with ``key`` in ``X-API-Key``; parses its JSON report."""
    report = workdir / f"{name}.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", f"{base_url}/openapi.json",
        "--header", f"X-API-Key: {key}",
        "--checks", "all",
        "--max-examples", str(max_examples),
        "--seed", str(seed),
        "--workers", str(workers),
        "--suppress-health-check", "all",
        "--report", "json", "--report-json-path", str(report),
        *filters,
    ]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(
        command,
        cwd=workdir,  # schemathesis keeps a cache folder in its working directory
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - start
    still_valid = httpx.get(
        f"{base_url}/api/v1/model", headers={"X-API-Key": key}, timeout=60
    ).is_success
    output = done.stdout + done.stderr
    if not report.exists():
        raise RuntimeError(f"schemathesis wrote no report (exit {done.returncode}):\n{output}")
    data = json.loads(report.read_text())
    return PassResult(
        name=name,
        role=role,
        generated=int(data["test_cases"]["generated"]),
        exit_code=done.returncode,
        failures=list(data["failures"]),
        errors=list(data["errors"]),
        warnings={k: list(v) for k, v in data["warnings"].items() if v},
        seconds=seconds,
        key_still_valid=still_valid,
        output=output,
    )


def run_roles(
    base_url: str,
    keys: dict[str, str],
    workdir: Path,
    *,
    max_examples: int,
    seed: int,
    workers: int = 1,
) -> list[PassResult]:
    """The four passes (investigator, operator, admin, admin on key revocation)."""
    found = seed_data(base_url, keys["operator"], keys["investigator"])
    config = write_config(workdir / "schemathesis.toml", found)
    path = REVOKE_PATH
    not_revoke = ["--exclude-path", path]
    passes = [
        ("investigator", "investigator", not_revoke),
        ("operator", "operator", not_revoke),
        ("admin", "admin", not_revoke),
        ("admin-revoke", "admin", ["--include-path", path]),
    ]
    return [
        run_pass(
            base_url,
            keys[role],
            name=name,
            role=role,
            config=config,
            workdir=workdir,
            max_examples=max_examples,
            seed=seed,
            workers=workers,
            filters=filters,
        )
        for name, role, filters in passes
    ]


def summary(results: Sequence[PassResult], server_errors: int) -> dict[str, object]:
    return {
        "cases": sum(r.generated for r in results),
        "server_errors": server_errors,
        "passes": [
            {
                "name": r.name,
                "cases": r.generated,
                "seconds": round(r.seconds, 1),
                "problems": r.problems(),
                "warnings": r.warnings,
            }
            for r in results
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--model", type=Path, default=Path("model_store/default"))
    parser.add_argument("--max-examples", type=int, default=100, help="per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sketchreid-fuzz-"))
    with temp_database(args.database, work) as url:
        # Off: the wrong-key pass would lock the fuzzer's address out (429s where the API's
        # own answers are under test); the throttle has tests of its own.
        server = Server(
            data_dir=work / "data",
            database_url=url,
            model_dir=args.model.resolve(),
            extra_env={"SKETCHREID_AUTH_FAILURE_LIMIT": "0"},
        )
        server.migrate()
        keys = {role: server.create_key(role) for role in ("admin", "operator", "investigator")}
        server.start()
        try:
            results = run_roles(
                server.base_url,
                keys,
                work,
                max_examples=args.max_examples,
                seed=args.seed,
                workers=args.workers,
            )
            errors = server_errors(server.base_url)
        finally:
            server.stop()
    report = summary(results, errors) | {
        "database": args.database,
        "model": str(args.model),
        "max_examples": args.max_examples,
        "seed": args.seed,
        "work": str(work),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        (work / f"{r.name}.txt").write_text(r.output)
    failed = errors > 0 or any(p["problems"] for p in report["passes"])  # type: ignore[union-attr]
    print(f"{'FAILED' if failed else 'passed'}: {report['cases']} cases, {errors} server errors;"
          f" schemathesis output in {work}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
