"""Retrieval maths on embeddings and distance matrices: CMC/mAP under the Market-1501 rules
(``metrics``), k-reciprocal re-ranking (``rerank``), the query with relevance feedback
(``feedback``) and key-set helpers (``keysets``). Pure numpy; may import only ``app.errors``
and the id-set helpers of ``app.index.idset``.
"""
