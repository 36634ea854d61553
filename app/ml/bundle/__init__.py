"""Model bundles on disk: the manifest, saving and verified loading into an embedder
(``store``), combining separately trained members (``combine``), and the ONNX files beside a
bundle (``onnx_files``: record and verification; ``onnx_export``; ``onnx_runtime``: the
ONNX Runtime embedder). May import: ``infer``, ``models``, ``transforms``, ``images``,
``app.errors``. Never ``train``, ``evaluation``, ``retrieval`` or ``data``.
"""
