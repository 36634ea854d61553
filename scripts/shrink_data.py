"""Copy a data folder with every image scaled down (same layout, same names).

Used to ship ../shared/data to the GPU machine under its 64 MiB transfer limit: photos and
crops to at most MAX_H pixels high, JPEG quality --quality. The models read 64x32 or 128x64 inputs,
so nothing they see is lost. Never commit the output (it is data of real people).

    python scripts/shrink_data.py SRC DST --max-height 160
"""

from __future__ import annotations

import argparse
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from app.ml.images import load_image


def shrink(src: Path, dst: Path, max_height: int, quality: int) -> None:
    image = load_image(src, max_side=None)
    if image.height > max_height:
        width = max(1, round(image.width * max_height / image.height))
        image = image.resize((width, max_height), Image.Resampling.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    image.save(dst.with_suffix(".jpg"), quality=quality)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--max-height", type=int, default=160)
    parser.add_argument("--quality", type=int, default=95)
    args = parser.parse_args()
    jobs = []
    for path in args.src.rglob("*"):
        target = args.dst / path.relative_to(args.src)
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            jobs.append((path, target))
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda job: shrink(*job, args.max_height, args.quality), jobs))
    print(f"{len(jobs)} images -> {args.dst}")


if __name__ == "__main__":
    main()
