"""PKU-Sketch layout reader: the shared :class:`Sample` type and :class:`PKUSketchDataset`.

Layout under ``root``::

    photo/<pid>_<cam>_<frame>.jpg        e.g. 12_03_22011.jpg -> pid 12, camid 3
    sketch/<pid>.jpg                     one sketch per person, camid -1
    styleAnnotation/<style>_<count>.txt  the pids drawn in that style, one a line

``.jpg``, ``.jpeg`` and ``.png`` are accepted; hidden files (".DS_Store") are ignored. ``sketch/``
and ``styleAnnotation/`` are optional: identities without a sketch still give training photos.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.errors import DataLayoutError

Modality = Literal["photo", "sketch"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
UNKNOWN_STYLE = "?"

_PHOTO_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
_SKETCH_NAME = re.compile(r"^(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
_STYLE_NAME = re.compile(r"^([A-Za-z]+)_(\d+)\.txt$")
_PID = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Sample:
    """One image of one person. Sketches have ``camid == -1``."""

    path: Path
    pid: int
    camid: int
    modality: Modality


@dataclass
class PKUSketchDataset:
    """Photos and sketches of a PKU-Sketch-style folder, sorted by (pid, camid, file name)."""

    root: Path
    photos: list[Sample]
    sketches: list[Sample]
    styles: dict[int, str] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        """Sorted identities having at least one photo."""
        return sorted({s.pid for s in self.photos})

    @property
    def sketch_pids(self) -> list[int]:
        """Sorted identities having both a sketch and at least one photo (the usable queries)."""
        with_photo = {s.pid for s in self.photos}
        return sorted({s.pid for s in self.sketches if s.pid in with_photo})

    def style_of(self, pid: int) -> str:
        """The drawing style letter of ``pid``'s sketch, ``"?"`` when not annotated."""
        return self.styles.get(pid, UNKNOWN_STYLE)

    def subset(self, pids: Iterable[int]) -> PKUSketchDataset:
        """The photos, sketches and styles of the given identities only."""
        keep = set(pids)
        return PKUSketchDataset(
            root=self.root,
            photos=[s for s in self.photos if s.pid in keep],
            sketches=[s for s in self.sketches if s.pid in keep],
            styles={pid: style for pid, style in self.styles.items() if pid in keep},
        )


def load_pku_sketch(root: str | Path) -> PKUSketchDataset:
    """Read a PKU-Sketch-style folder; raises :class:`DataLayoutError` with one clear line."""
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"data folder not found: {root}")
    photo_dir = root / "photo"
    if not photo_dir.is_dir():
        raise DataLayoutError(f"no photo/ folder in {root} (expected the PKU-Sketch layout)")

    photos = []
    for path in _files(photo_dir):
        match = _PHOTO_NAME.match(path.name)
        if match is None:
            raise DataLayoutError(
                f"cannot parse photo file name {path}: expected <pid>_<camera>_<frame>.jpg"
            )
        photos.append(Sample(path, int(match[1]), int(match[2]), "photo"))
    if not photos:
        raise DataLayoutError(f"no photos in {photo_dir}")
    photos.sort(key=lambda s: (s.pid, s.camid, s.path.name))

    sketches: dict[int, Sample] = {}
    sketch_dir = root / "sketch"
    if sketch_dir.is_dir():
        for path in _files(sketch_dir):
            match = _SKETCH_NAME.match(path.name)
            if match is None:
                raise DataLayoutError(f"cannot parse sketch file name {path}: expected <pid>.jpg")
            pid = int(match[1])
            if pid in sketches:
                raise DataLayoutError(
                    f"two sketches for person {pid}: {sketches[pid].path.name} and {path.name}"
                )
            sketches[pid] = Sample(path, pid, -1, "sketch")

    known = {s.pid for s in photos} | set(sketches)
    annotated = _read_styles(root / "styleAnnotation")
    styles = {pid: annotated.get(pid, UNKNOWN_STYLE) for pid in sorted(known)}
    return PKUSketchDataset(
        root=root,
        photos=photos,
        sketches=[sketches[pid] for pid in sorted(sketches)],
        styles=styles,
    )


def _files(folder: Path) -> list[Path]:
    """Regular, non-hidden files of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _read_styles(folder: Path) -> dict[int, str]:
    """pid -> style letter from ``styleAnnotation/<style>_<count>.txt``; {} if no folder."""
    styles: dict[int, str] = {}
    if not folder.is_dir():
        return styles
    for path in _files(folder):
        match = _STYLE_NAME.match(path.name)
        if match is None:
            raise DataLayoutError(
                f"cannot parse style annotation file name {path}: expected <style>_<count>.txt"
            )
        style = match[1]
        for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            text = line.strip()
            if not text:
                continue
            if not _PID.fullmatch(text):
                raise DataLayoutError(f"{path} line {lineno}: expected a person id, got {text!r}")
            pid = int(text)
            if styles.get(pid, style) != style:
                raise DataLayoutError(
                    f"person {pid} is annotated with two styles, {styles[pid]!r} and {style!r} "
                    f"({path.name})"
                )
            styles[pid] = style
    return styles
