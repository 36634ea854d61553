"""Data-set readers (PKU-Sketch, Market-1501 layouts), identity splits and the synthetic-people
generator. May import: the image loader and preprocessing (``app.ml.images``,
``app.ml.transforms``) and ``app.errors``; no other room.
"""
