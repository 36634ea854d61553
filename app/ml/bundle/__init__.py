"""Model bundles on disk: the manifest, its files' checksums and the loaded :class:`Bundle`
(``manifest``, no PyTorch), saving and verified loading of the PyTorch networks (``store``),
combining separately trained members (``combine``), and the ONNX files of a bundle
(``onnx_files``: record and verification; ``onnx_export``; ``onnx_quantize`` and ``onnx_int8``;
``onnx_runtime``: the ONNX Runtime embedder, no PyTorch; ``onnx_parity``: checks against the
PyTorch networks; ``prepared``: the files a bundle carries, served without PyTorch).
May import: ``infer``, ``models``, ``transforms``, ``images``, ``app.errors``. Never
``train``, ``evaluation``, ``retrieval`` or ``data``.
"""
