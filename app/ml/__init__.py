"""The machine-learning side of sketch-reid, one room a concern (dependencies run one way):

``images`` and ``transforms`` (the one image loader and the preprocessing) and ``models``
(networks) are reachable from every room; ``data`` reads data sets; ``retrieval`` is the maths
on distances (rank metrics, re-ranking, relevance feedback, key sets); ``infer`` embeds and
translates images; ``bundle`` stores, loads and exports models (PyTorch or ONNX Runtime);
``train`` trains them; ``evaluation`` measures them (and runs the cross-validation protocol,
which trains). Nothing here imports the service (``app.api``, ``app.services``, ``app.db``,
``app.cli``, ``app.web``); ``tests/test_ml_layout.py`` keeps these arrows true.
"""
