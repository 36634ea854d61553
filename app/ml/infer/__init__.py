"""Inference, the one embedding path of training's checks, evaluation and the service: the
embedder and translator (preprocessing, flip TTA, ensemble combination), precision choice,
query views (sketch, translated, fused) and the dynamic batching queue.
May import: ``models``, ``images``, ``transforms``, ``app.errors``. Never ``bundle``,
``train``, ``evaluation``, ``retrieval`` or ``data``: it stands alone for workers and
quantised serving.
"""
