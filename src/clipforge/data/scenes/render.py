"""Drawing `SceneSpec`s: PIL polygons at 4x resolution, box-downsampled, on a noisy grey background."""

from __future__ import annotations

import math
from functools import cache, lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from .spec import DIAMETER, SceneObject, SceneSpec

SUPERSAMPLE = 4
RGB = {"red": (220, 30, 35), "orange": (250, 140, 20), "yellow": (250, 230, 40),
       "green": (30, 165, 60), "blue": (30, 80, 230), "purple": (140, 50, 190),
       "pink": (250, 135, 205), "brown": (120, 70, 25), "black": (15, 15, 15),
       "white": (252, 252, 252)}


def _unit_polygon(shape: str, n_curve: int = 28) -> list[tuple[float, float]]:
    """Outline points in a unit-radius frame (y down), upright."""
    if shape == "circle":
        return [(math.cos(2 * math.pi * k / n_curve), math.sin(2 * math.pi * k / n_curve)) for k in range(n_curve)]
    if shape == "square":
        h = 0.8
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "triangle":
        # Near-equilateral, centred on its bounding box so "upside-down" keeps the same footprint.
        return [(0.0, -0.85), (0.98, 0.85), (-0.98, 0.85)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            a = -math.pi / 2 + math.pi * k / 5
            pts.append((r * math.cos(a), r * math.sin(a) + 0.08))
        return pts
    if shape == "cross":
        a = 0.33
        return [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
                (-1, -a), (-a, -a)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.75, 0.0), (0.0, 1.0), (-0.75, 0.0)]
    if shape == "heart":
        pts = []
        for k in range(n_curve):
            t = 2 * math.pi * k / n_curve
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((x / 16.5, (y + 2.5) / 15.5))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


@cache
def _polygon(shape: str, orientation: str) -> tuple[tuple[float, float], ...]:
    pts = _unit_polygon(shape)
    if orientation == "rotated":
        # Triangles and hearts turn upside down; a cross tilts by 45 degrees into an x.
        ang = math.pi / 4 if shape == "cross" else math.pi
        c, s = math.cos(ang), math.sin(ang)
        pts = [(c * x - s * y, s * x + c * y) for x, y in pts]
    return tuple(pts)


@lru_cache(maxsize=8)
def _patterns(side: int) -> dict[str, Image.Image]:
    """Full-canvas 'L' masks for the textured fills, in supersampled pixels."""
    yy, xx = np.mgrid[0:side, 0:side]
    # Periods are set in output pixels (~3 px) so the texture survives downsampling to 40 px.
    stripes = (((xx + yy) // 8) % 2 == 0)
    p = 12
    row = yy // p
    cx = (xx + (row % 2) * (p // 2)) % p - p // 2
    cy = yy % p - p // 2
    dots = cx * cx + cy * cy <= 17
    return {"striped": Image.fromarray((stripes * 255).astype(np.uint8)),
            "dotted": Image.fromarray((dots * 255).astype(np.uint8))}


def _draw_object(canvas: Image.Image, draw: ImageDraw.ImageDraw, obj: SceneObject, scale: float,
                 side: int) -> None:
    colour = RGB[obj.colour]
    radius = DIAMETER[obj.size] * scale * side / 2
    unit = _polygon(obj.shape, obj.orientation)
    line = max(2, round(side * 0.022))  # ~0.9 output px: thick enough to survive the downsample
    for cx, cy in obj.centres:
        pts = [(cx * side + radius * x, cy * side + radius * y) for x, y in unit]
        if obj.fill == "solid":
            draw.polygon(pts, fill=colour)
        elif obj.fill == "outline":
            draw.polygon(pts, outline=colour, width=round(line * 1.6))
        else:
            # Texture only inside the shape: shape mask x pattern, over the object's bounding box.
            x0, y0 = max(0, int(cx * side - radius - 2)), max(0, int(cy * side - radius - 2))
            x1, y1 = min(side, int(cx * side + radius + 3)), min(side, int(cy * side + radius + 3))
            mask = Image.new("L", (x1 - x0, y1 - y0), 0)
            ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in pts], fill=255)
            tex = _patterns(side)[obj.fill].crop((x0, y0, x1, y1))
            canvas.paste(colour, (x0, y0, x1, y1), ImageChops.multiply(mask, tex))
            # A hairline rim keeps the silhouette without making it read as an outline shape.
            draw.polygon(pts, outline=colour, width=2)


def render(spec: SceneSpec, image_size: int = 40, rng: np.random.Generator | None = None) -> Image.Image:
    """The scene as an RGB image; `rng` draws background tone, noise and small size jitter."""
    rng = rng if rng is not None else np.random.default_rng(0)
    # Fixed draw order (background first, then one jitter per group) so pair images that differ
    # in one object still share background and noise.
    grey = rng.uniform(115, 175)
    tint = rng.uniform(-8, 8, size=3)
    noise = rng.normal(0.0, 5.0, size=(image_size, image_size, 3))
    jitter = rng.uniform(0.93, 1.05, size=len(spec.objects))
    side = image_size * SUPERSAMPLE
    bg = tuple(int(round(grey + t)) for t in tint)
    canvas = Image.new("RGB", (side, side), bg)
    draw = ImageDraw.Draw(canvas)
    for obj, j in zip(spec.objects, jitter):
        _draw_object(canvas, draw, obj, float(j), side)
    small = np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) + noise
    return Image.fromarray(np.clip(small, 0, 255).astype(np.uint8))
