"""/api/v1/model: the active model bundle's manifest."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import CtxDep, ReaderDep
from app.ml.retrieval.rerank import DEFAULT_K1, DEFAULT_K2, DEFAULT_LAMBDA
from app.services.context import index_size

router = APIRouter(tags=["model"])


@router.get("/model")
def get_model(ctx: CtxDep, _key: ReaderDep) -> dict[str, Any]:
    return {
        "name": ctx.bundle.name,
        "version": ctx.bundle.version,
        "embedding_key": ctx.embedding_key,
        "dim": ctx.dim,
        "translator": ctx.bundle.translator is not None,
        "query_view": ctx.bundle.view,
        "translation_weight": ctx.bundle.manifest.translation_weight,
        "member_weights": ctx.bundle.manifest.shares(),
        "centering": ctx.bundle.manifest.centering is not None,
        "rerank_auto_min_items": ctx.settings.RERANK_AUTO_MIN_ITEMS,
        "rerank_candidates": ctx.settings.RERANK_CANDIDATES,
        "rerank_defaults": {"k1": DEFAULT_K1, "k2": DEFAULT_K2, "lambda_value": DEFAULT_LAMBDA},
        "inference": ctx.bundle.inference,
        "inference_threads": ctx.bundle.embedder.intra_op_threads(),
        "batching": ctx.inference.describe(),
        "index": {"type": ctx.index.index_type, "kind": ctx.index.kind, "items": index_size(ctx)},
        "manifest": ctx.bundle.manifest.model_dump(mode="json"),
    }
