"""Evaluation: the test set of a data folder embedded in a bundle's view (``testset``),
``evaluate`` (Rank-k, mAP, CMC, re-ranking, relevance feedback), the cross-validation protocol
(``crossval``, which trains one model per split), rank-list and translation pictures and
plots. May import every other room of ``app.ml``; nothing in ``app.ml`` imports it.
"""
