"""The regenerated Larochelle variants: deterministic, and visually sane by a statistic.

Small versions are generated from the 500-digit fixture; the full sizes are checked through the
registry only for the quick procedural sets (the others take seconds each: see
test_full_mnist_variant, marked slow).
"""

import numpy as np
import pytest

from freshcore.data import variants as V
from freshcore.data.registry import content_digest

SMALL = {"n_train": 100, "n_test": 300}


def small(name: str, pool, seed: int | None = None) -> dict[str, np.ndarray]:
    recipe = V.RECIPES[name]
    return V.generate(recipe, pool if recipe.needs_mnist else None, seed=seed, **SMALL)


def vertical_fraction(x: np.ndarray) -> float:
    """Share of images whose ink spreads more vertically than horizontally (second moments):
    most upright digits are taller than wide; rotated ones are not."""
    w = x.astype(np.float64)
    rows = np.arange(x.shape[1])[None, :, None]
    cols = np.arange(x.shape[2])[None, None, :]
    mass = w.sum(axis=(1, 2))
    r = (w * rows).sum(axis=(1, 2)) / mass
    c = (w * cols).sum(axis=(1, 2)) / mass
    var_r = (w * (rows - r[:, None, None]) ** 2).sum(axis=(1, 2)) / mass
    var_c = (w * (cols - c[:, None, None]) ** 2).sum(axis=(1, 2)) / mass
    return float(np.mean(var_r > var_c))


def frame(x: np.ndarray, width: int = 3) -> np.ndarray:
    """The outer frame of each image, where unrotated MNIST digits never reach."""
    mask = np.ones(x.shape[1:], dtype=bool)
    mask[width:-width, width:-width] = False
    return x[:, mask]


def neighbour_correlation(x: np.ndarray) -> float:
    """Correlation of horizontally adjacent pixels in the top rows (background only)."""
    a = x[:, :3, :-1].astype(np.float64).ravel()
    b = x[:, :3, 1:].astype(np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("name", list(V.RECIPES))
def test_same_seed_same_bytes(name, mnist_500):
    a, b = small(name, mnist_500), small(name, mnist_500)
    assert content_digest(a) == content_digest(b)
    c = small(name, mnist_500, seed=V.RECIPES[name].seed + 1)
    assert content_digest(a) != content_digest(c)
    assert a["x_train"].shape == (100, 28, 28) and a["x_test"].shape == (300, 28, 28)
    assert a["x_train"].dtype == np.uint8 and a["y_train"].dtype == np.int64


def test_mnist_digits_are_used_once(mnist_500):
    y = mnist_500[1]
    out = small("mnist-rot", mnist_500)
    assert np.array_equal(
        np.sort(np.concatenate([out["y_train"], out["y_test"]])),
        np.sort(y[np.random.default_rng(V.RECIPES["mnist-rot"].seed).permutation(len(y))[:400]]),
    )
    with pytest.raises(ValueError, match="1000 digits needed, 500 given"):
        V.generate(V.RECIPES["mnist-rot"], mnist_500, n_train=500, n_test=500)


def test_rotation_changes_moments(mnist_500):
    x, _ = mnist_500
    upright = vertical_fraction(x)
    rotated = vertical_fraction(np.concatenate(list(small("mnist-rot", mnist_500).values())[::2]))
    assert upright > 0.85
    assert 0.3 < rotated < 0.7  # uniform angles: as often wide as tall


def test_rotation_is_a_rotation(mnist_500):
    x, _ = mnist_500
    turned = V.rotate(x[:50], np.full(50, np.pi / 2))
    errors = [
        np.abs(turned.astype(int) - np.rot90(x[:50], k=k, axes=(1, 2))).max() for k in (1, 3)
    ]  # the sense of rotation does not matter
    assert min(errors) <= 1
    same = V.rotate(x[:50], np.zeros(50))
    assert np.array_equal(same, x[:50])
    # Ink is kept (bilinear resampling moves it, little is lost at 45 degrees).
    half = V.rotate(x[:50], np.full(50, np.pi / 4))
    assert half.sum() == pytest.approx(x[:50].sum(), rel=0.05)


def test_random_background_is_uniform(mnist_500):
    out = small("mnist-bg-rand", mnist_500)
    bg = frame(np.concatenate([out["x_train"], out["x_test"]])).astype(np.float64)
    assert bg.mean() == pytest.approx(127.5, abs=2.0)
    assert bg.std() == pytest.approx(np.sqrt((256**2 - 1) / 12), abs=1.5)  # 73.9
    counts = np.bincount(bg.astype(np.int64).ravel() // 32, minlength=8) / bg.size
    assert np.all(np.abs(counts - 1 / 8) < 0.01)
    assert abs(neighbour_correlation(out["x_test"])) < 0.05


@pytest.mark.parametrize("name", ["mnist-bg-img", "mnist-bg-img-rot"])
def test_image_backgrounds_are_textured_photos(name, mnist_500):
    out = small(name, mnist_500)
    x = np.concatenate([out["x_train"], out["x_test"]])
    assert neighbour_correlation(x) > 0.5  # natural images are smooth, noise is not
    per_image = frame(x).std(axis=1) / 255.0
    assert np.median(per_image) > V.MIN_PATCH_STD
    # The digit stays on top: where the source digit is full white, so is the output.
    if name == "mnist-bg-img":
        order = np.random.default_rng(V.RECIPES[name].seed).permutation(500)[:400]
        src = mnist_500[0][order]
        assert np.all(x[src == 255] == 255)


def test_bg_img_rot_is_rotated(mnist_500):
    out = small("mnist-bg-img-rot", mnist_500)
    order = np.random.default_rng(V.RECIPES["mnist-bg-img-rot"].seed).permutation(500)[:400]
    src = mnist_500[0][order]
    x = np.concatenate([out["x_train"], out["x_test"]])
    # Where the unrotated digit is white, the rotated set mostly is not.
    assert np.mean(x[src == 255] == 255) < 0.5


def test_background_photos_are_bundled():
    photos = V.background_photos()
    assert len(photos) == len(V.BACKGROUND_IMAGES) >= 10
    assert all(p.dtype == np.uint8 and p.ndim == 2 and min(p.shape) >= 100 for p in photos)
    assert len(V.backgrounds_digest()) == 64


def test_rectangles_labels_match_shapes():
    x, y = V.rectangles(2000, np.random.default_rng(5))
    assert np.bincount(y).tolist() == [1000, 1000]
    for image, label in zip(x, y, strict=True):
        rows = np.flatnonzero(image.any(axis=1))
        cols = np.flatnonzero(image.any(axis=0))
        height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert (height > width) == bool(label) and abs(height - width) >= 3
        # An outline: the border is white, the inside black.
        assert image[rows[0], cols[0] : cols[-1] + 1].all()
        assert not image[rows[0] + 1 : rows[-1], cols[0] + 1 : cols[-1]].any()


def test_convex_labels_match_shapes():
    x, y = V.convex(600, np.random.default_rng(6))
    assert np.bincount(y).tolist() == [300, 300]
    masks = x.reshape(len(x), -1) > 0
    flagged = V.clearly_nonconvex(masks)
    assert not flagged[y == 1].any() and flagged[y == 0].all()
    assert masks.sum(1).min() >= 19
    # Area does not give the label away.
    area = masks.sum(1)
    assert np.median(area[y == 0]) == pytest.approx(np.median(area[y == 1]), rel=0.2)
    # Each convex region meets every row and column in one run.
    for image in x[y == 1][:100] > 0:
        for line in (*image, *image.T):
            assert np.count_nonzero(np.diff(line.astype(np.int8)) == 1) + line[0] <= 1


def test_nonconvex_detector():
    square = np.zeros((28, 28), bool)
    square[5:20, 5:20] = True
    u_shape = square.copy()
    u_shape[5:15, 10:14] = False  # a notch three pixels wide
    assert V.clearly_nonconvex(np.stack([square, u_shape]).reshape(2, -1)).tolist() == [False, True]


def test_procedural_sets_through_the_registry(tmp_path):
    """Full-size rectangles via the registry: cached, verified on load, rebuilt if corrupt."""
    from freshcore.data import load

    ds = load("rectangles", tmp_path)
    assert len(ds.x_train) + len(ds.x_val) == 1200 and len(ds.x_test) == 50_000
    assert ds.y_test.bincount().tolist() == [25_000, 25_000]
    path = tmp_path / "rectangles.npz"
    before = path.read_bytes()
    corrupted = bytearray(before)
    corrupted[len(corrupted) // 2] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    again = load("rectangles", tmp_path)
    assert path.read_bytes() != bytes(corrupted)  # detected and regenerated
    assert np.array_equal(again.x_test.numpy(), ds.x_test.numpy())


@pytest.mark.slow
def test_full_mnist_variant(mnist_cache):
    from freshcore.data import load

    ds = load("mnist-bg-img-rot", mnist_cache)
    assert ds.x_train.shape[1:] == (1, 28, 28)
    assert len(ds.x_train) + len(ds.x_val) == 12_000 and len(ds.x_test) == 50_000
    assert ds.y_test.bincount().min() > 4000
