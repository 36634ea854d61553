"""Market-1501-style folder reader (Market-1501, DukeMTMC-reID, CUHK03 in Market naming).

File names start with ``<pid>_c<camera>``: ``0002_c1s1_000451_03.jpg`` (Market-1501),
``0005_c2_f0046985.jpg`` (DukeMTMC-reID). pid ``-1`` marks junk crops and ``0000`` distractors;
both are left out unless asked for. Camera numbers are kept as written (1-based).
"""

from __future__ import annotations

import re
from pathlib import Path

from app.errors import DataLayoutError
from app.ml.data.pku import IMAGE_SUFFIXES, Sample

MARKET_SUBSETS = ("bounding_box_train", "bounding_box_test", "query")
JUNK_PID = -1
DISTRACTOR_PID = 0

_NAME = re.compile(r"^(-1|\d+)_c(\d+)")


def load_market(
    root: str | Path,
    subset: str = "bounding_box_train",
    include_junk: bool = False,
    include_distractors: bool = False,
) -> list[Sample]:
    """Photos of one subset folder, sorted by file name.

    ``root`` is the data set root holding ``<subset>/``, or that folder itself. Raises
    :class:`DataLayoutError` when the folder is missing, an image name does not parse, or no
    image is left.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"data folder not found: {root}")
    folder = root / subset
    if not folder.is_dir():
        if root.name != subset:
            raise DataLayoutError(
                f"no {subset}/ folder in {root} (expected the Market-1501 layout)"
            )
        folder = root

    samples = []
    left_out = 0
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue  # Thumbs.db, readme files, ...
        match = _NAME.match(path.name)
        if match is None:
            raise DataLayoutError(
                f"cannot parse image file name {path}: expected <pid>_c<camera>..., "
                "e.g. 0002_c1s1_000451_03.jpg"
            )
        pid = int(match[1])
        if (pid == JUNK_PID and not include_junk) or (
            pid == DISTRACTOR_PID and not include_distractors
        ):
            left_out += 1
            continue
        samples.append(Sample(path, pid, int(match[2]), "photo"))
    if not samples:
        extra = f" ({left_out} junk/distractor images left out)" if left_out else ""
        raise DataLayoutError(f"no usable images in {folder}{extra}")
    return samples
