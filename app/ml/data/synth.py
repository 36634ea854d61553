"""Synthetic data in the PKU-Sketch layout: procedurally drawn people, their CCTV-like photos and
grey line-drawing sketches. Used by the tests, the quick start and the demo.

Each identity has a body shape (stature, shoulder and hip width, torso and head size), clothing
(top and bottom colours, a top pattern: plain, stripes, checks or dots; trousers, shorts or a
skirt; long or short sleeves), hair (short, long or a hat), shoes and a bag (none, backpack,
handbag or shoulder bag). Every camera sees every identity with its own colour cast, brightness,
background, scale and JPEG quality, plus a slight shift and lean per photo. The sketch shows the
same shape, pattern and accessories as outlines with hatching or tone for dark colours, in one of
three drawing styles (a: fine hatching, b: thick lines and tone, c: loose doubled strokes).
Output is byte-for-byte deterministic for a seed.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from app.errors import UserInputError
from app.ml.data.pku import PKUSketchDataset, load_pku_sketch

RGB = tuple[int, int, int]
Point = tuple[float, float]

STYLES = ("a", "b", "c")
PATTERNS = ("plain", "hstripes", "vstripes", "checks", "dots")
BAGS = ("none", "backpack", "handbag", "shoulder")
HAIRS = ("short", "long", "hat")
BOTTOMS = ("trousers", "shorts", "skirt")
COLOURS: dict[str, RGB] = {
    "black": (28, 28, 30),
    "white": (236, 236, 232),
    "grey": (128, 128, 128),
    "red": (190, 32, 40),
    "blue": (40, 70, 180),
    "navy": (26, 34, 84),
    "green": (42, 130, 62),
    "yellow": (230, 200, 50),
    "orange": (232, 122, 32),
    "pink": (232, 146, 176),
    "purple": (112, 52, 142),
    "brown": (112, 72, 40),
    "beige": (212, 192, 150),
    "denim": (70, 96, 142),
}
SKIN_TONES: tuple[RGB, ...] = ((236, 200, 170), (214, 170, 130), (170, 120, 84), (110, 74, 50))
HAIR_COLOURS: tuple[RGB, ...] = ((20, 18, 18), (60, 40, 26), (120, 84, 50), (196, 170, 110))

PHOTO_HEIGHTS = (128, 256)  # photo height range in pixels; width is half the height
SKETCH_SIZE = (200, 400)  # width, height
_SUPERSAMPLE = 2  # draw at twice the size, then downscale: anti-aliased edges


@dataclass(frozen=True)
class Person:
    """What identifies a synthetic person. Lengths are fractions of the body height."""

    stature: float
    head: float
    shoulder: float
    hip: float
    torso: float
    skin: RGB
    hair: str
    hair_colour: RGB
    hat_colour: RGB
    top: RGB
    pattern: str
    pattern_colour: RGB
    pattern_step: float
    long_sleeves: bool
    bottom_kind: str
    bottom: RGB
    shoes: RGB
    bag: str
    bag_colour: RGB
    bag_side: int
    style: str


@dataclass(frozen=True)
class _Part:
    """A filled polygon in body coordinates (x right of the centre line, y down from the head)."""

    points: list[Point]
    colour: RGB
    pattern: str = "plain"
    pattern_colour: RGB = (0, 0, 0)
    pattern_step: float = 0.05


def generate_synthetic(
    out: str | Path,
    identities: int,
    seed: int,
    *,
    photos_per_camera: int = 1,
    cameras: int = 2,
    overwrite: bool = False,
) -> PKUSketchDataset:
    """Write ``identities`` people (pids 1..N) in the PKU-Sketch layout under ``out``.

    Refuses (:class:`UserInputError`) to add to a folder that already holds a ``photo/``,
    ``sketch/`` or ``styleAnnotation/`` file unless ``overwrite``; then those files are replaced.
    Returns the dataset read back with :func:`load_pku_sketch`.
    """
    if not 1 <= identities <= 100_000:
        raise UserInputError(f"identities must be between 1 and 100000, not {identities}")
    if not 1 <= cameras <= 99:
        raise UserInputError(f"cameras must be between 1 and 99, not {cameras}")
    if not 1 <= photos_per_camera <= 1000:
        raise UserInputError(
            f"photos per camera must be between 1 and 1000, not {photos_per_camera}"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"not a folder: {out}")
    folders = [out / "photo", out / "sketch", out / "styleAnnotation"]
    existing = [p for d in folders if d.is_dir() for p in d.iterdir() if p.is_file()]
    if existing and not overwrite:
        raise UserInputError(f"{out} already holds a data set ({existing[0]}); use overwrite")
    for path in existing:
        path.unlink()
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)

    camera_looks = [
        Camera.draw(random.Random(f"synth:{seed}:camera:{cam}")) for cam in range(1, cameras + 1)
    ]
    by_style: dict[str, list[int]] = {}
    for pid in range(1, identities + 1):
        rng = random.Random(f"synth:{seed}:person:{pid}")
        person = draw_person(rng)
        by_style.setdefault(person.style, []).append(pid)
        render_sketch(person, rng).save(out / "sketch" / f"{pid}.jpg", quality=90)
        for cam, look in enumerate(camera_looks, 1):
            frames = sorted(rng.sample(range(1, 100_000), photos_per_camera))
            for frame in frames:
                shot = random.Random(f"synth:{seed}:photo:{pid}:{cam}:{frame}")
                photo, quality = render_photo(person, look, shot)
                photo.save(out / "photo" / f"{pid}_{cam:02d}_{frame}.jpg", quality=quality)
    for style, pids in sorted(by_style.items()):
        text = "".join(f"{pid}\n" for pid in pids)
        (out / "styleAnnotation" / f"{style}_{len(pids)}.txt").write_text(text, encoding="utf-8")
    return load_pku_sketch(out)


def draw_person(rng: random.Random) -> Person:
    """A random identity."""
    names = list(COLOURS)
    top = rng.choice(names)
    pattern_colour = rng.choice([n for n in names if _contrast(COLOURS[n], COLOURS[top]) > 80])
    bag = rng.choice(BAGS)
    shoulder = rng.uniform(0.10, 0.15)
    return Person(
        stature=rng.uniform(0.90, 1.0),
        head=rng.uniform(0.058, 0.074),
        shoulder=shoulder,
        hip=shoulder * rng.uniform(0.72, 0.95),
        torso=rng.uniform(0.27, 0.34),
        skin=rng.choice(SKIN_TONES),
        hair=rng.choice(HAIRS),
        hair_colour=rng.choice(HAIR_COLOURS),
        hat_colour=COLOURS[rng.choice(names)],
        top=COLOURS[top],
        pattern=rng.choice(PATTERNS),
        pattern_colour=COLOURS[pattern_colour],
        pattern_step=rng.uniform(0.035, 0.07),
        long_sleeves=rng.random() < 0.5,
        bottom_kind=rng.choice(BOTTOMS),
        bottom=COLOURS[
            rng.choice(
                [
                    "black",
                    "navy",
                    "denim",
                    "grey",
                    "beige",
                    "brown",
                    "white",
                    "blue",
                    "red",
                    "green",
                ]
            )
        ],
        shoes=COLOURS[rng.choice(["black", "white", "brown", "grey", "red", "blue"])],
        bag=bag,
        bag_colour=COLOURS[rng.choice(["black", "brown", "red", "blue", "grey", "beige", "green"])],
        bag_side=rng.choice((-1, 1)),
        style=rng.choice(STYLES),
    )


def _contrast(a: RGB, b: RGB) -> float:
    return float(sum(abs(x - y) for x, y in zip(a, b, strict=True)))


def _luma(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


# ---------------------------------------------------------------------------------------------
# Body geometry


def _quad(a: Point, b: Point, width_a: float, width_b: float) -> list[Point]:
    """A limb from a to b, as a quadrilateral of the given widths at each end."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    length = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / length, dx / length
    ha, hb = width_a / 2, width_b / 2
    return [
        (a[0] + nx * ha, a[1] + ny * ha),
        (b[0] + nx * hb, b[1] + ny * hb),
        (b[0] - nx * hb, b[1] - ny * hb),
        (a[0] - nx * ha, a[1] - ny * ha),
    ]


def _ellipse(
    cx: float, cy: float, rx: float, ry: float, start: float = 0, end: float = 360, n: int = 20
) -> list[Point]:
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in np.linspace(start, end, n, endpoint=end - start < 360)
    ]


def _lerp(a: Point, b: Point, t: float) -> Point:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def body_parts(p: Person) -> list[_Part]:
    """The person's polygons in drawing order (later parts hide earlier ones)."""
    h = p.head
    head_y = h * 1.08
    neck_y = head_y + h
    sy = neck_y + 0.022  # shoulders
    wy = sy + p.torso  # waist
    ay = 0.955  # ankles
    sw, hw = p.shoulder, p.hip
    parts: list[_Part] = []

    if p.bag == "backpack":
        parts.append(
            _Part(
                [
                    (-sw - 0.035, sy + 0.02),
                    (sw + 0.035, sy + 0.02),
                    (sw + 0.03, wy - 0.03),
                    (-sw - 0.03, wy - 0.03),
                ],
                p.bag_colour,
            )
        )
    if p.hair == "long":
        parts.append(
            _Part(
                [
                    (-h * 1.05, head_y),
                    (h * 1.05, head_y),
                    (h * 1.25, sy + 0.07),
                    (-h * 1.25, sy + 0.07),
                ],
                p.hair_colour,
            )
        )

    knee = 0.45
    for side in (-1, 1):
        top_out, top_in = (side * hw, wy), (side * 0.006, wy)
        low_in, low_out = (side * 0.018, ay), (side * 0.075, ay)
        leg = [top_out, top_in, low_in, low_out]
        if p.bottom_kind == "trousers":
            parts.append(_Part(leg, p.bottom))
        else:
            parts.append(_Part(leg, p.skin))
            if p.bottom_kind == "shorts":
                parts.append(
                    _Part(
                        [
                            top_out,
                            top_in,
                            _lerp(top_in, low_in, knee),
                            _lerp(top_out, low_out, knee),
                        ],
                        p.bottom,
                    )
                )
        parts.append(
            _Part(
                [
                    (side * 0.012, ay - 0.006),
                    (side * 0.085, ay - 0.006),
                    (side * 0.095, 1.0),
                    (side * 0.004, 1.0),
                ],
                p.shoes,
            )
        )
    if p.bottom_kind == "skirt":
        ky = wy + 0.5 * (ay - wy)
        parts.append(_Part([(-hw, wy), (hw, wy), (hw * 1.4, ky), (-hw * 1.4, ky)], p.bottom))

    parts.append(
        _Part(
            [(-sw, sy), (sw, sy), (hw, wy + 0.01), (-hw, wy + 0.01)],
            p.top,
            p.pattern,
            p.pattern_colour,
            p.pattern_step,
        )
    )
    if p.bag == "backpack":
        for side in (-1, 1):
            parts.append(
                _Part(
                    _quad(
                        (side * sw * 0.62, sy), (side * sw * 0.55, sy + p.torso * 0.62), 0.03, 0.026
                    ),
                    p.bag_colour,
                )
            )
    parts.append(
        _Part(
            [
                (-0.022, neck_y - 0.01),
                (0.022, neck_y - 0.01),
                (0.025, sy + 0.004),
                (-0.025, sy + 0.004),
            ],
            p.skin,
        )
    )
    parts.append(_Part(_ellipse(0, head_y, h * 0.84, h), p.skin))
    if p.hair == "hat":
        parts.append(
            _Part(
                [
                    (-h * 0.82, head_y - h * 0.35),
                    (-h * 0.75, head_y - h * 1.22),
                    (h * 0.75, head_y - h * 1.22),
                    (h * 0.82, head_y - h * 0.35),
                ],
                p.hat_colour,
            )
        )
        parts.append(
            _Part(
                [
                    (-h * 1.35, head_y - h * 0.48),
                    (h * 1.35, head_y - h * 0.48),
                    (h * 1.35, head_y - h * 0.3),
                    (-h * 1.35, head_y - h * 0.3),
                ],
                p.hat_colour,
            )
        )
    else:
        parts.append(
            _Part(
                [
                    *_ellipse(0, head_y - h * 0.05, h * 0.9, h * 1.02, 180, 360, 12),
                    (h * 0.88, head_y - h * 0.3),
                    (-h * 0.88, head_y - h * 0.3),
                ],
                p.hair_colour,
            )
        )

    for side in (-1, 1):
        shoulder, wrist = (side * (sw - 0.012), sy + 0.02), (side * (sw + 0.035), wy + 0.05)
        parts.append(
            _Part(_quad(shoulder, wrist, 0.058, 0.042), p.top if p.long_sleeves else p.skin)
        )
        if not p.long_sleeves:
            parts.append(_Part(_quad(shoulder, _lerp(shoulder, wrist, 0.38), 0.064, 0.056), p.top))
        hand = _lerp(shoulder, wrist, 1.12)
        parts.append(_Part(_ellipse(hand[0], hand[1], 0.024, 0.03, n=12), p.skin))

    if p.bag == "shoulder":
        s = p.bag_side
        parts.append(
            _Part(
                _quad((s * sw * 0.7, sy), (-s * (hw + 0.01), wy - 0.03), 0.018, 0.018), p.bag_colour
            )
        )
        x = -s * (hw + 0.05)
        parts.append(
            _Part(
                [
                    (x - 0.05, wy - 0.04),
                    (x + 0.05, wy - 0.04),
                    (x + 0.055, wy + 0.06),
                    (x - 0.055, wy + 0.06),
                ],
                p.bag_colour,
            )
        )
    elif p.bag == "handbag":
        hand = (p.bag_side * (sw + 0.045), wy + 0.085)
        x, y = hand
        parts.append(
            _Part(
                [*_ellipse(x, y, 0.03, 0.03, 180, 360, 10), (x + 0.02, y), (x - 0.02, y)],
                p.bag_colour,
            )
        )
        parts.append(
            _Part(
                [
                    (x - 0.05, y + 0.01),
                    (x + 0.05, y + 0.01),
                    (x + 0.055, y + 0.1),
                    (x - 0.055, y + 0.1),
                ],
                p.bag_colour,
            )
        )
    return parts


class _Placement:
    """Maps body coordinates to pixels: scale, centre, feet line and lean (a shear)."""

    def __init__(self, height_px: float, centre_x: float, feet_y: float, lean: float) -> None:
        self.height_px, self.centre_x, self.feet_y, self.lean = height_px, centre_x, feet_y, lean

    def __call__(self, pts: list[Point]) -> list[Point]:
        top = self.feet_y - self.height_px
        return [
            (self.centre_x + (x + self.lean * (1 - y)) * self.height_px, top + y * self.height_px)
            for x, y in pts
        ]


def _pattern_mask(
    size: tuple[int, int], kind: str, step: float, origin: Point, offset: float
) -> Image.Image:
    """255 where the pattern colour goes (bands of half a step, or dots), 0 elsewhere."""
    width, height = size
    step = max(step, 4.0)
    half = step / 2
    x0, y0 = origin[0] - offset, origin[1] - offset
    if kind == "dots":
        mask = Image.new("L", size, 0)
        draw = ImageDraw.Draw(mask)
        r = step * 0.22
        for row in range(int((height - y0) // step) + 2):
            y = y0 + row * step
            for col in range(-1, int((width - x0) // step) + 2):
                x = x0 + col * step + (half if row % 2 else 0)
                draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
        return mask
    rows = (np.floor((np.arange(height) - y0) / half).astype(int) % 2 == 0)[:, None]
    cols = (np.floor((np.arange(width) - x0) / half).astype(int) % 2 == 0)[None, :]
    if kind == "hstripes":
        on = np.broadcast_to(rows, (height, width))
    elif kind == "vstripes":
        on = np.broadcast_to(cols, (height, width))
    else:  # checks
        on = rows ^ cols
    return Image.fromarray(np.where(on, 255, 0).astype(np.uint8), mode="L")


def _bbox(pts: list[Point]) -> tuple[float, float, float, float]:
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    return min(xs), min(ys), max(xs), max(ys)


# ---------------------------------------------------------------------------------------------
# Photos


@dataclass(frozen=True)
class Camera:
    """What a camera does to every photo it takes."""

    gains: tuple[float, float, float]
    brightness: float
    background: str
    height: int
    quality: int
    blur: float

    @staticmethod
    def draw(rng: random.Random) -> Camera:
        return Camera(
            gains=(rng.uniform(0.85, 1.15), rng.uniform(0.9, 1.1), rng.uniform(0.85, 1.15)),
            brightness=rng.uniform(0.8, 1.15),
            background=rng.choice(("noise", "gradient", "colour")),
            height=rng.randint(PHOTO_HEIGHTS[0] + 16, PHOTO_HEIGHTS[1] - 16),
            quality=rng.randint(65, 92),
            blur=rng.uniform(0.0, 0.8),
        )


def render_photo(person: Person, camera: Camera, rng: random.Random) -> tuple[Image.Image, int]:
    """One CCTV-like crop of ``person`` (RGB) and the JPEG quality to save it with."""
    height = min(max(camera.height + rng.randint(-16, 16), PHOTO_HEIGHTS[0]), PHOTO_HEIGHTS[1])
    width = height // 2
    ss = _SUPERSAMPLE
    size = (width * ss, height * ss)
    nrng = np.random.default_rng(rng.getrandbits(64))
    canvas = _background(size, camera.background, rng, nrng)

    body_h = size[1] * person.stature * rng.uniform(0.86, 0.95)
    free = size[1] - body_h
    place = _Placement(
        body_h,
        size[0] * (0.5 + rng.uniform(-0.06, 0.06)),
        size[1] - free * rng.uniform(0.2, 0.6),
        rng.uniform(-0.04, 0.04),
    )
    draw = ImageDraw.Draw(canvas)
    for part in body_parts(person):
        pts = place(part.points)
        colour = _jitter(part.colour, rng)
        draw.polygon(pts, fill=colour, outline=tuple(int(c * 0.7) for c in colour))
        if part.pattern != "plain":
            shape = Image.new("L", size, 0)
            ImageDraw.Draw(shape).polygon(pts, fill=255)
            stripes = _pattern_mask(
                size, part.pattern, part.pattern_step * body_h, _bbox(pts)[:2], rng.uniform(0, 10)
            )
            canvas.paste(
                _jitter(part.pattern_colour, rng), mask=ImageChops.multiply(shape, stripes)
            )
    canvas = canvas.resize((width, height), Image.Resampling.LANCZOS)

    gains = np.array(camera.gains) * camera.brightness * rng.uniform(0.9, 1.1)
    pixels = np.asarray(canvas, dtype=np.float64) * gains[None, None, :]
    pixels += nrng.normal(0, rng.uniform(2, 6), pixels.shape)
    photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    if camera.blur > 0.2:
        photo = photo.filter(ImageFilter.GaussianBlur(camera.blur))
    return photo, min(95, max(50, camera.quality + rng.randint(-8, 8)))


def _jitter(c: RGB, rng: random.Random, amount: int = 10) -> RGB:
    r, g, b = (min(255, max(0, v + rng.randint(-amount, amount))) for v in c)
    return (r, g, b)


def _background(
    size: tuple[int, int], kind: str, rng: random.Random, nrng: np.random.Generator
) -> Image.Image:
    width, height = size
    base = np.array([rng.randint(60, 200) for _ in range(3)], dtype=np.float32)
    if kind == "gradient":
        other = np.array([rng.randint(40, 220) for _ in range(3)], dtype=np.float32)
        t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        arr = np.broadcast_to(base * (1 - t) + other * t, (height, width, 3))
    elif kind == "noise":
        grid = (max(2, height // 24), max(2, width // 24), 1)
        small = nrng.uniform(-45, 45, grid) + nrng.uniform(-12, 12, (*grid[:2], 3))
        blobs = Image.fromarray(np.clip(small + 128, 0, 255).astype(np.uint8), mode="RGB")
        arr = base + np.asarray(blobs.resize(size, Image.Resampling.BILINEAR), np.float32) - 128
    else:
        arr = np.broadcast_to(base, (height, width, 3))
    arr = arr + nrng.normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")


# ---------------------------------------------------------------------------------------------
# Sketches


@dataclass(frozen=True)
class _Pen:
    """A drawing style."""

    width: float  # line width in output pixels
    ink: int  # grey level of the lines
    wobble: float  # jitter of line points, output pixels
    strokes: int  # how many times each outline is drawn
    tone: bool  # shade dark areas with grey tone instead of hatching
    spacing: float  # hatching spacing multiplier


PENS = {
    "a": _Pen(width=1.4, ink=35, wobble=0.3, strokes=1, tone=False, spacing=1.0),
    "b": _Pen(width=2.8, ink=15, wobble=0.5, strokes=1, tone=True, spacing=0.8),
    "c": _Pen(width=1.1, ink=75, wobble=1.4, strokes=2, tone=False, spacing=1.25),
}


def render_sketch(person: Person, rng: random.Random) -> Image.Image:
    """A grey line drawing of ``person`` (mode L, white background) in ``person.style``."""
    pen = PENS[person.style]
    ss = _SUPERSAMPLE
    size = (SKETCH_SIZE[0] * ss, SKETCH_SIZE[1] * ss)
    canvas = Image.new("L", size, 255)
    body_h = size[1] * rng.uniform(0.9, 0.95)
    place = _Placement(
        body_h,
        size[0] / 2 + rng.uniform(-3, 3) * ss,
        size[1] - (size[1] - body_h) / 2,
        rng.uniform(-0.01, 0.01),
    )
    line_w = max(1, round(pen.width * ss))
    for part in body_parts(person):
        pts = place(part.points)
        shape = Image.new("L", size, 0)
        ImageDraw.Draw(shape).polygon(pts, fill=255)
        layer = _shade(size, part.colour, pen, ss)
        if part.pattern != "plain":
            bands = _pattern_mask(
                size, part.pattern, part.pattern_step * body_h, _bbox(pts)[:2], rng.uniform(0, 10)
            )
            layer.paste(
                _shade(size, part.pattern_colour, pen, ss, angle=-45, floor=0.35), mask=bands
            )
            edges = bands.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(3))
            layer.paste(pen.ink, mask=edges)
        canvas.paste(layer, mask=shape)  # hides what is behind, then shades
        draw = ImageDraw.Draw(canvas)
        for _ in range(pen.strokes):
            line = _wobbly(pts + pts[:1], pen.wobble * ss, rng)
            draw.line(line, fill=pen.ink, width=line_w, joint="curve")
    return canvas.resize(SKETCH_SIZE, Image.Resampling.LANCZOS)


def _shade(
    size: tuple[int, int], colour: RGB, pen: _Pen, ss: int, angle: float = 45, floor: float = 0.25
) -> Image.Image:
    """White paper with the shading an artist gives a surface of ``colour``."""
    darkness = 1 - _luma(colour) / 255
    if darkness < floor:
        return Image.new("L", size, 255)
    if pen.tone:
        return Image.new("L", size, int(255 - 150 * darkness))
    layer = Image.new("L", size, 255)
    spacing = (16 - 11 * darkness) * pen.spacing * ss
    _hatch(layer, spacing, angle, pen.ink + 40, ss)
    if darkness > 0.7:
        _hatch(layer, spacing, angle + 90, pen.ink + 40, ss)
    return layer


_HATCH_CACHE: dict[tuple[tuple[int, int], float, float, int, int], Image.Image] = {}


def _hatch(layer: Image.Image, spacing: float, angle: float, ink: int, ss: int) -> None:
    key = (layer.size, round(spacing, 1), angle, ink, ss)
    lines = _HATCH_CACHE.get(key)
    if lines is None:
        lines = Image.new("L", layer.size, 255)
        draw = ImageDraw.Draw(lines)
        w, h = layer.size
        t = math.tan(math.radians(angle))
        c = -h * abs(t) - w
        while c < w + h * abs(t):
            draw.line([(c, 0), (c + h * t, h)], fill=ink, width=max(1, ss // 2))
            c += spacing
        if len(_HATCH_CACHE) > 256:
            _HATCH_CACHE.clear()
        _HATCH_CACHE[key] = lines
    layer.paste(ImageChops.darker(layer, lines))


def _wobbly(pts: list[Point], amount: float, rng: random.Random) -> list[Point]:
    """Points along the polyline every few pixels, each nudged by up to ``amount``."""
    out: list[Point] = []
    for a, b in itertools.pairwise(pts):
        steps = max(1, int(math.hypot(b[0] - a[0], b[1] - a[1]) // 12))
        for i in range(steps):
            x, y = _lerp(a, b, i / steps)
            out.append((x + rng.uniform(-amount, amount), y + rng.uniform(-amount, amount)))
    out.append(out[0])
    return out
