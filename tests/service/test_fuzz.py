"""schemathesis against the live API (uvicorn on a free port), with a key of each role.

Few examples per operation, so that ``make test`` stays short; ``benchmarks/fuzz_api.py`` runs
the same passes with many more against a ``sketchreid serve`` process (docs/reliability.md).
Every schemathesis check runs: no 5xx, responses (status, media type, headers, body) as
the OpenAPI document declares them, bad input refused, schema-valid input not refused with
anything but a 400 the schema cannot foresee, 405 for methods a path does not have.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from app.api.main import create_app
from app.core.config import Settings
from app.ml.bundle.store import Bundle

from .conftest import Keys, running_server

MAX_EXAMPLES = 5  # per operation and phase; the coverage phase adds its boundary cases
SEED = 1
# The four passes generate about 1,700 cases with these settings; far fewer means that
# schemathesis stopped early or tested little (a broken schema, an unreachable server).
MIN_CASES = 1000


def _load_fuzz() -> ModuleType:
    """``benchmarks/fuzz_api.py`` by path (shared with the larger run)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_api.py"
    spec = importlib.util.spec_from_file_location("fuzz_api", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_api"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_fuzzing_finds_no_server_error_and_no_schema_violation(
    settings: Settings, bundle: Bundle, keys: Keys, tmp_path: Path
) -> None:
    # The throttle off: the wrong-key pass would lock the fuzzer's address out and leave the
    # operations behind 429s untested (tests/service/test_auth_throttle.py tests the throttle).
    app = create_app(settings.model_copy(update={"AUTH_FAILURE_LIMIT": 0}), bundle=bundle)
    role_keys = {r: getattr(keys, r)["X-API-Key"] for r in ("admin", "operator", "investigator")}
    with running_server(app) as base:
        results = fuzz.run_roles(base, role_keys, tmp_path, max_examples=MAX_EXAMPLES, seed=SEED)
        server_errors = fuzz.server_errors(base)
    report = fuzz.summary(results, server_errors)
    details = "\n\n".join(f"== {r.name}\n{r.output[-6000:]}" for r in results if r.problems())
    assert [p["problems"] for p in report["passes"]] == [[], [], [], []], details
    assert server_errors == 0
    assert report["cases"] >= MIN_CASES, report
