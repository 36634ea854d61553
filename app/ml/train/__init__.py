"""Training: presets, batch augmentation, samplers, losses, the training loop with per-epoch
checkpoints, pre-training with its health check, and the pipeline that writes bundles.
May import: ``data``, ``models``, ``infer``, ``bundle``, ``retrieval`` (rank metrics for the
health check), ``images``, ``transforms``. Never ``evaluation`` (which imports training).
"""
