"""Varied photos, made deterministically from the real photos that installed packages ship (scikit-image's data,
scikit-learn's two sample images, matplotlib's Grace Hopper) and the bundled samples: random crops of 15-100 % of
the area at aspect ratios 3:4-4:3, flips, small rotations, brightness / contrast / saturation / hue changes,
occasional grayscale or blur, saved as JPEG at quality 70-95 and at a size picked per photo.

Two calls with the same seed give the same files; different seeds give different photos of the same sources (use
one seed to calibrate and another to evaluate).

    python bench/photos.py OUT_DIR [--count 300] [--seed 1] [--size 480] [--camera]

`--camera` makes camera-size photos (1600x1200 to 2048x1536, upscaled from the sources): what `bench/batch.py`
decodes.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
# scikit-image's photos of real scenes (its synthetic images -- chessboards, text, phantoms -- are left out)
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)
CAMERA_SIZES = ((1600, 1200), (2048, 1536), (1920, 1440), (1600, 1200))


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def source_photos() -> list[Path]:
    """The real photos available here, sorted by file name; duplicates (the same name) counted once."""
    found: dict[str, Path] = {}
    for path in sorted((ROOT / "samples" / "images").iterdir()):
        found[path.stem] = path
    skimage = _package_dir("skimage")
    for name in SKIMAGE_PHOTOS if skimage else ():
        path = skimage / "data" / name  # type: ignore[operator]
        if path.is_file():
            found.setdefault(Path(name).stem, path)
    sklearn = _package_dir("sklearn")
    if sklearn is not None:
        for path in sorted((sklearn / "datasets" / "images").glob("*.jpg")):
            found.setdefault(path.stem, path)
    matplotlib = _package_dir("matplotlib")
    if matplotlib is not None:
        hopper = matplotlib / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        if hopper.is_file():
            found.setdefault(hopper.stem, hopper)
    return [found[name] for name in sorted(found)]


def _vary(photo: Image.Image, rng: np.random.Generator, size: tuple[int, int] | int) -> Image.Image:
    width, height = photo.size
    area = width * height * rng.uniform(0.15, 1.0)
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    crop_w = int(min(width, round(np.sqrt(area * aspect))))
    crop_h = int(min(height, round(np.sqrt(area / aspect))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    image = photo.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        image = image.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR, expand=False)
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.7, 1.3)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.7, 1.3)))
    image = ImageEnhance.Color(image).enhance(float(rng.uniform(0.6, 1.4)))
    if rng.random() < 0.3:  # a hue shift
        hsv = np.asarray(image.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(-12, 13))) % 256
        image = Image.fromarray(hsv, "HSV").convert("RGB")
    if rng.random() < 0.1:
        image = image.convert("L").convert("RGB")
    if rng.random() < 0.1:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    if isinstance(size, int):  # shorter side to about `size`
        scale = size * rng.uniform(0.8, 1.25) / min(image.size)
        target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    else:
        target = size
    return image.resize(target, Image.Resampling.BICUBIC)


def make_photos(out: Path, count: int, seed: int, size: int = 480, camera: bool = False) -> list[Path]:
    """`count` JPEG files in `out` (created), named photo0000.jpg ...; the same seed gives the same files."""
    out.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in source_photos()]
    rng = np.random.default_rng(seed)
    written = []
    for index in range(count):
        photo = sources[index % len(sources)]
        target = CAMERA_SIZES[index % len(CAMERA_SIZES)] if camera else size
        if camera and index % 2:  # portrait as well as landscape
            target = (target[1], target[0])  # type: ignore[index]
        image = _vary(photo, rng, target)
        path = out / f"photo{index:04d}.jpg"
        image.save(path, quality=int(rng.integers(70, 96)))
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=480, help="shorter side, about (not with --camera)")
    parser.add_argument("--camera", action="store_true", help="1600x1200 to 2048x1536 photos")
    args = parser.parse_args()
    written = make_photos(args.out, args.count, args.seed, args.size, args.camera)
    print(f"{len(written)} photos from {len(source_photos())} sources in {args.out}")


if __name__ == "__main__":
    main()
