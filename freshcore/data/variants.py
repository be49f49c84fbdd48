"""Regenerations of the MNIST variants of Larochelle et al. (2007), "An empirical evaluation of
deep architectures on problems with many factors of variation".

The original files cannot be downloaded here, so each set is rebuilt deterministically (numpy's
PCG64 with a fixed seed, no threads) from MNIST digits, from grey-scale photos bundled in
scikit-image's wheel, or from procedural shapes. The same seed gives the same bytes on one
platform; another CPU or numpy build may round sin/cos differently and move a rare pixel by one
level, which is why the cache records the digest of what was generated locally. They follow the
published recipes but are NOT the original files; docs/datasets.md describes each recipe and the
choices made.

Every generator takes its sizes as arguments, so tests can build small versions quickly.
The bytes depend on the order of the random draws, batch sizes included: any change to a
recipe's code must bump its `Recipe.version`, so cached copies are rebuilt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

SIDE = 28
CHUNK = 4096

# Natural photographs in scikit-image's wheel (skimage/data): the grey ones as they are, the
# colour ones converted to luma by Pillow ("L"). Synthetic images (chessboard, phantom, logo)
# are left out.
BACKGROUND_IMAGES = (
    "camera.png",
    "moon.png",
    "grass.png",
    "gravel.png",
    "brick.png",
    "coins.png",
    "text.png",
    "page.png",
    "clock_motion.png",
    "cell.png",
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
)
MIN_PATCH_STD = 0.04  # patches flatter than this (on a 0..1 scale) carry no texture: skipped


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: str  # "rot", "bg-rand", "bg-img", "bg-img-rot", "rectangles", "convex"
    seed: int
    n_train: int  # train + validation, as in the original sets
    n_test: int
    class_names: tuple[str, ...]
    needs_mnist: bool
    version: int = 1  # bump when a recipe changes: the cached file is then rebuilt


DIGITS = tuple(str(i) for i in range(10))
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("mnist-rot", "rot", 1001, 12_000, 50_000, DIGITS, True),
        Recipe("mnist-bg-rand", "bg-rand", 1002, 12_000, 50_000, DIGITS, True),
        Recipe("mnist-bg-img", "bg-img", 1003, 12_000, 50_000, DIGITS, True),
        Recipe("mnist-bg-img-rot", "bg-img-rot", 1004, 12_000, 50_000, DIGITS, True),
        Recipe("rectangles", "rectangles", 1005, 1_200, 50_000, ("wide", "tall"), False),
        Recipe("convex", "convex", 1006, 8_000, 50_000, ("non-convex", "convex"), False, version=2),
    )
}


# --------------------------------------------------------------------------- digit transforms


def rotate(images: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotate each (28, 28) uint8 image about its centre by its angle (radians), bilinear
    interpolation, zero outside; vectorised over the batch."""
    n, h, w = images.shape
    out = np.empty_like(images)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    dy, dx = rows - cy, cols - cx
    ph, pw = h + 2, w + 2  # a zero border to sample from outside the digit
    for s in range(0, n, CHUNK):
        e = min(s + CHUNK, n)
        padded = np.zeros((e - s, ph, pw), dtype=np.float32)
        padded[:, 1:-1, 1:-1] = images[s:e]
        flat = padded.ravel()
        cos = np.cos(angles[s:e]).astype(np.float32)[:, None, None]
        sin = np.sin(angles[s:e]).astype(np.float32)[:, None, None]
        # Inverse mapping: where in the source each output pixel comes from.
        sy = np.clip(cy + cos * dy - sin * dx + 1, 0, h + 1)
        sx = np.clip(cx + sin * dy + cos * dx + 1, 0, w + 1)
        y0 = np.minimum(sy.astype(np.int64), h)  # sy >= 0, so truncation is floor
        x0 = np.minimum(sx.astype(np.int64), w)
        fy, fx = sy - y0, sx - x0
        base = np.arange(e - s)[:, None, None] * (ph * pw) + y0 * pw + x0
        top = flat[base] * (1 - fx) + flat[base + 1] * fx
        bottom = flat[base + pw] * (1 - fx) + flat[base + pw + 1] * fx
        value = top * (1 - fy) + bottom * fy
        out[s:e] = np.clip(np.rint(value), 0, 255).astype(np.uint8)
    return out


def composite(digits: np.ndarray, backgrounds: np.ndarray) -> np.ndarray:
    """Lay white digits over a background: the digit's intensity is its opacity,
    out = d + (1 - d) * bg (on a 0..1 scale), rounded to uint8."""
    d = digits.astype(np.float64) / 255.0
    bg = backgrounds.astype(np.float64) / 255.0
    return np.clip(np.rint((d + (1.0 - d) * bg) * 255.0), 0, 255).astype(np.uint8)


@cache
def background_photos() -> tuple[np.ndarray, ...]:
    """The grey-scale photos that background patches are cut from (uint8, H x W)."""
    folder = resources.files("skimage") / "data"
    photos = []
    for name in BACKGROUND_IMAGES:
        with resources.as_file(folder / name) as path, Image.open(path) as image:
            photos.append(np.asarray(image.convert("L"), dtype=np.uint8).copy())
    return tuple(photos)


def backgrounds_digest() -> str:
    """SHA-256 over the background photos' pixels: recorded with each generated set, since a
    different scikit-image release could ship different pixels."""
    h = hashlib.sha256()
    for photo in background_photos():
        h.update(np.asarray(photo.shape, dtype=np.int64).tobytes())
        h.update(photo.tobytes())
    return h.hexdigest()


def image_patches(n: int, rng: np.random.Generator) -> np.ndarray:
    """n random 28x28 patches from the photos (photo chosen uniformly, position uniformly),
    skipping patches whose standard deviation is under MIN_PATCH_STD."""
    photos = background_photos()
    windows = [sliding_window_view(p, (SIDE, SIDE)) for p in photos]
    out = np.empty((n, SIDE, SIDE), dtype=np.uint8)
    filled = 0
    while filled < n:
        m = int((n - filled) * 1.3) + 16
        which = rng.integers(0, len(photos), size=m)
        ys = rng.random(m)
        xs = rng.random(m)
        batch = np.empty((m, SIDE, SIDE), dtype=np.uint8)
        for k, win in enumerate(windows):
            idx = np.flatnonzero(which == k)
            r = (ys[idx] * win.shape[0]).astype(np.int64)
            c = (xs[idx] * win.shape[1]).astype(np.int64)
            batch[idx] = win[r, c]
        keep = batch.reshape(m, -1).std(axis=1) / 255.0 >= MIN_PATCH_STD
        take = batch[keep][: n - filled]
        out[filled : filled + len(take)] = take
        filled += len(take)
    return out


def transform_digits(kind: str, digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply a variant's transformation to uint8 digits (N, 28, 28)."""
    n = len(digits)
    if kind in ("rot", "bg-img-rot"):
        digits = rotate(digits, rng.uniform(0.0, 2 * np.pi, size=n))
    if kind == "bg-rand":
        return composite(digits, rng.integers(0, 256, size=digits.shape, dtype=np.uint8))
    if kind in ("bg-img", "bg-img-rot"):
        return composite(digits, image_patches(n, rng))
    return digits


# --------------------------------------------------------------------------- shapes


def rectangles(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """White rectangle outlines (1 pixel wide) on black; label 1 (tall) if height > width.
    Sides are drawn uniformly from 4..28 with |height - width| >= 3, the position uniformly
    among those that fit. Classes alternate before shuffling, so they are balanced."""
    y = rng.permutation(np.arange(n) % 2).astype(np.int64)
    a = np.empty(n, dtype=np.int64)
    b = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        s = rng.integers(4, SIDE + 1, size=(2 * n, 2))
        s = s[np.abs(s[:, 0] - s[:, 1]) >= 3][: n - filled]
        a[filled : filled + len(s)], b[filled : filled + len(s)] = s.max(1), s.min(1)
        filled += len(s)
    height = np.where(y == 1, a, b)
    width = np.where(y == 1, b, a)
    top = (rng.random(n) * (SIDE - height + 1)).astype(np.int64)
    left = (rng.random(n) * (SIDE - width + 1)).astype(np.int64)
    r = np.arange(SIDE)[None, :, None]
    c = np.arange(SIDE)[None, None, :]
    t, lft = top[:, None, None], left[:, None, None]
    bot, rgt = t + height[:, None, None] - 1, lft + width[:, None, None] - 1
    inside = (r >= t) & (r <= bot) & (c >= lft) & (c <= rgt)
    border = (r == t) | (r == bot) | (c == lft) | (c == rgt)
    return (inside & border).astype(np.uint8) * 255, y


_GRID = np.stack(np.mgrid[0:SIDE, 0:SIDE], axis=-1).reshape(-1, 2).astype(np.float32) + 0.5


def _polygons(n: int, rng: np.random.Generator, reach: tuple[float, float]) -> np.ndarray:
    """n random convex regions (N, 784) bool: the intersection of 3 + Geometric(0.3) (at most
    12) half-planes around a random centre, each at a distance drawn from `reach`."""
    k = np.minimum(2 + rng.geometric(0.3, size=n), 12)
    centre = rng.uniform(6.0, SIDE - 6.0, size=(n, 1, 2))
    theta = rng.uniform(0.0, 2 * np.pi, size=(n, 12))
    dist = rng.uniform(*reach, size=(n, 12))
    normal = np.stack([np.cos(theta), np.sin(theta)], axis=1)  # (n, 2, 12)
    # Pixel p is inside plane j when (p - centre) . normal_j <= dist_j; inactive planes never cut.
    limit = dist + np.einsum("nj,njk->nk", centre[:, 0], normal)
    limit[np.arange(12)[None, :] >= k[:, None]] = np.inf
    normal, limit = normal.astype(np.float32), limit.astype(np.float32)
    inside = np.ones((n, SIDE * SIDE), dtype=bool)
    for j in range(12):  # plane by plane, only for the regions that have plane j
        rows = np.flatnonzero(k > j)
        nx, ny, lim = normal[rows, 0, j, None], normal[rows, 1, j, None], limit[rows, j, None]
        inside[rows] &= _GRID[:, 0] * nx + _GRID[:, 1] * ny <= lim
    return inside


@cache
def _lattice_lines() -> np.ndarray:
    """Indices of the pixels along every lattice line in 8 directions (rows, columns, both
    diagonals and the four knight's-move slopes), padded with -1: (n_lines, 28)."""
    lines = []
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1), (1, 2), (2, 1), (1, -2), (2, -1)):
        for r0 in range(SIDE):
            for c0 in range(SIDE):
                if 0 <= r0 - dr < SIDE and 0 <= c0 - dc < SIDE:
                    continue  # not the first point of its line
                line, r, c = [], r0, c0
                while 0 <= r < SIDE and 0 <= c < SIDE:
                    line.append(r * SIDE + c)
                    r, c = r + dr, c + dc
                if len(line) >= 3:
                    lines.append(line + [-1] * (SIDE - len(line)))
    return np.asarray(lines, dtype=np.int64)


def clearly_nonconvex(masks: np.ndarray) -> np.ndarray:
    """True where some lattice line meets the region in two pieces separated by a gap of at
    least 2 pixels. A digitised convex region never has a gap on a lattice line, so the test
    separates the classes without ambiguity."""
    lines = _lattice_lines().T  # (28, n_lines): position along the line first, for speed
    padded = np.concatenate([masks, np.zeros((len(masks), 1), dtype=bool)], axis=1)
    on = padded[:, lines]  # (N, 28, n_lines); index -1 is the False pad
    count = on.astype(np.int8)  # becomes: pixels of the region so far along the line
    for p in range(1, SIDE):  # (a running sum by slices beats np.cumsum on this layout)
        count[:, p] += count[:, p - 1]
    hole = (count > 0) & (count < count[:, -1:]) & ~on  # between its first and last pixel
    return np.any(hole[:, 1:] & hole[:, :-1], axis=(1, 2))


def convex(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """White regions on black; label 1 if convex. Convex: one random convex polygon (see
    `_polygons`, planes 3..16 pixels from the centre) of at least 19 pixels. Non-convex: the
    union of 2-4 smaller polygons (planes 1.5..6 pixels out, each at least 10 pixels) kept
    only if `clearly_nonconvex`. The reaches are chosen so both classes cover about the same
    area (median about 330 pixels), so area alone does not give the label away. Balanced, in
    random order."""
    y = rng.permutation(np.arange(n) % 2).astype(np.int64)
    out = np.zeros((n, SIDE * SIDE), dtype=bool)
    for label, want in ((1, int(y.sum())), (0, int(n - y.sum()))):
        got: list[np.ndarray] = []
        count = 0
        while count < want:
            m = min(1024, 2 * (want - count) + 64)
            if label == 1:
                cand = _polygons(m, rng, (3.0, 16.0))
                cand = cand[cand.sum(1) >= 19]
            else:
                parts = rng.integers(2, 5, size=m)
                cand = np.zeros((m, SIDE * SIDE), dtype=bool)
                for j in range(4):
                    rows = np.flatnonzero(j < parts)
                    piece = _polygons(len(rows), rng, (1.5, 6.0))
                    big = piece.sum(1) >= 10
                    cand[rows[big]] |= piece[big]
                cand = cand[(cand.sum(1) >= 19) & clearly_nonconvex(cand)]
            got.append(cand[: want - count])
            count += len(got[-1])
        if want:
            out[y == label] = np.concatenate(got)
    return out.reshape(n, SIDE, SIDE).astype(np.uint8) * 255, y


# --------------------------------------------------------------------------- whole sets


def generate(
    recipe: Recipe,
    mnist: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> dict[str, np.ndarray]:
    """Build a variant: {"x_train", "y_train", "x_test", "y_test"} (uint8 images (N, 28, 28),
    int64 labels). `mnist` is the pool of source digits (images, labels): the real set uses
    MNIST's 70,000 digits (train then test), shuffled, the first n_train for training and the
    next n_test for testing, so no digit is in both. Sizes and seed default to the recipe's."""
    n_train = recipe.n_train if n_train is None else n_train
    n_test = recipe.n_test if n_test is None else n_test
    rng = np.random.default_rng(recipe.seed if seed is None else seed)
    total = n_train + n_test
    if progress:
        progress(f"generate {recipe.name}", 0, total)
    if recipe.needs_mnist:
        if mnist is None:
            raise ValueError(f"{recipe.name} needs the MNIST digits")
        images, labels = mnist
        if len(images) < total:
            raise ValueError(f"{recipe.name}: {total} digits needed, {len(images)} given")
        order = rng.permutation(len(images))[:total]
        x = np.empty((total, SIDE, SIDE), dtype=np.uint8)
        for s in range(0, total, 4 * CHUNK):
            e = min(s + 4 * CHUNK, total)
            x[s:e] = transform_digits(recipe.kind, images[order[s:e]], rng)
            if progress:
                progress(f"generate {recipe.name}", e, total)
        y = labels[order].astype(np.int64)
    else:
        make = rectangles if recipe.kind == "rectangles" else convex
        x_tr, y_tr = make(n_train, rng)
        if progress:
            progress(f"generate {recipe.name}", n_train, total)
        x_te, y_te = make(n_test, rng)
        x, y = np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te])
    if progress:
        progress(f"generate {recipe.name}", total, total)
    return {
        "x_train": x[:n_train],
        "y_train": y[:n_train],
        "x_test": x[n_train:],
        "y_test": y[n_train:],
    }
