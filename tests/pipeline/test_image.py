"""ImagePreprocessor against an independent numpy/Pillow computation and against torchvision's own transforms."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from forwardpass.config import ImageConfig, ModelConfig
from forwardpass.errors import ConfigError, DecodeError
from forwardpass.pipeline import Pipeline
from forwardpass.pipeline.image import ImagePreprocessor, decode_image, decode_scaled
from forwardpass.tensor import DataType, TensorSpec

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def make_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A smooth gradient plus noise: resizing has real work to do, values cover 0..255."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    return image.convert(mode) if mode != "RGB" else image


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def reference(
    data: bytes,
    *,
    color: str = "RGB",
    resize: int | tuple[int, int] | None = None,
    crop: int | tuple[int, int] | None = None,
    mean: list[float] = (0.0,),  # type: ignore[assignment]
    std: list[float] = (1.0,),  # type: ignore[assignment]
    layout: str = "NCHW",
) -> np.ndarray:
    """The same steps written out independently: Pillow for decode and bilinear resize, numpy for the rest."""
    image = Image.open(io.BytesIO(data)).convert(color)
    if isinstance(resize, int):
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = resize, int(resize * long / short)  # torchvision's _compute_resized_output_size
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    elif resize is not None:
        image = image.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
    pixels = np.asarray(image).astype(np.float64)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if crop is not None:
        crop_h, crop_w = (crop, crop) if isinstance(crop, int) else crop
        height, width = pixels.shape[:2]
        top = round((height - crop_h) / 2.0)  # torchvision's center_crop: int(round(x)), round half to even
        left = round((width - crop_w) / 2.0)
        pixels = pixels[top : top + crop_h, left : left + crop_w]
    pixels = (pixels / 255.0 - np.asarray(mean)) / np.asarray(std)
    return pixels.transpose(2, 0, 1) if layout == "NCHW" else pixels


def preprocess(raw: object, **fields: object) -> np.ndarray:
    config = ImageConfig(kind="image", **fields)  # type: ignore[arg-type]
    return ImagePreprocessor(config, "input")(raw)["input"]


SIZES = [(301, 200), (200, 301), (97, 131), (513, 257), (64, 64), (33, 1000)]
STEPS = [
    {"resize": 32, "crop": 24, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    {"resize": 32, "crop": 27, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},  # (32-27)/2 = 2.5 rounds to 2
    {"resize": 29, "crop": (20, 17), "layout": "NHWC", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.1]},
    {"color": "L", "resize": 20, "crop": 15, "mean": [0.5], "std": [0.25]},
    {"color": "L", "resize": 21, "layout": "NHWC"},
    {"resize": (30, 41)},
    {"crop": 31, "mean": [0.5], "std": [0.5]},
    {},
]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(
    "steps", STEPS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items() if k not in ("mean", "std")) or "plain"
)
def test_equals_an_independent_computation(size: tuple[int, int], steps: dict[str, Any]):
    data = encode(make_image(*size, seed=size[0]))
    expected = reference(data, **steps)
    got = preprocess(data, **steps)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_shapes_follow_torchvision_for_portrait_and_landscape():
    portrait = preprocess(encode(make_image(200, 301)), resize=256)
    landscape = preprocess(encode(make_image(301, 200)), resize=256)
    assert portrait.shape == (3, 385, 256)  # int(256 * 301 / 200) = 385
    assert landscape.shape == (3, 256, 385)
    assert preprocess(encode(make_image(200, 301)), resize=256, crop=224, layout="NHWC").shape == (224, 224, 3)


@pytest.mark.parametrize("source", ["path", "str", "bytes", "pil"])
def test_every_source_gives_the_same_array(tmp_path: Path, source: str):
    image = make_image(120, 90)
    data = encode(image)
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    raw = {"path": path, "str": str(path), "bytes": data, "pil": image}[source]
    np.testing.assert_array_equal(preprocess(raw, resize=40, crop=32), preprocess(data, resize=40, crop=32))


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "CMYK"])
def test_other_modes_are_converted(mode: str):
    data = encode(make_image(50, 40, mode=mode), "TIFF" if mode == "CMYK" else "PNG")
    got = preprocess(data, resize=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    np.testing.assert_allclose(got, reference(data, resize=32, mean=IMAGENET_MEAN, std=IMAGENET_STD), atol=1e-6)
    assert preprocess(data, color="L").shape == (1, 40, 50)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_a_16_bit_image_gives_the_pixels_of_its_8_bit_version(fmt: str):
    """Pillow's own conversion clips 16-bit values at 255: a 16-bit photo became all white (wrong answers, exit 0)."""
    gray = make_image(50, 40, mode="L")
    wide = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)  # 0..255 -> 0..65535
    assert Image.open(io.BytesIO(encode(wide, fmt))).mode == "I;16"
    for color in ("RGB", "L"):
        np.testing.assert_array_equal(
            preprocess(encode(wide, fmt), color=color, resize=32), preprocess(encode(gray), color=color, resize=32)
        )


def test_a_16_bit_png_that_pillow_opens_as_32_bit_gives_the_pixels_of_its_8_bit_version():
    """Older Pillows (pyproject allows pillow>=10) open a 16-bit grayscale PNG in mode I; a PNG holds at most 16 bits,
    so its range is known: it was refused as 32-bit."""
    gray = make_image(50, 40, mode="L")
    wide = Image.fromarray(np.asarray(gray).astype(np.int32) * 257)
    wide.format = "PNG"  # what such a Pillow's PNG plugin makes
    np.testing.assert_array_equal(preprocess(wide, resize=32), preprocess(encode(gray), resize=32))


@pytest.mark.parametrize("pixels", [np.full((8, 8), 300, np.int32), np.full((8, 8), 0.5, np.float32)], ids=str)
def test_a_32_bit_image_is_refused_naming_the_fix(pixels: np.ndarray):
    """32-bit integer and float pixels have no range to scale from: clipped at 255 they answered plausibly wrong."""
    message = decode_error(encode(Image.fromarray(pixels), "TIFF"))
    assert "32-bit" in message
    assert "8 or 16 bits" in message


def test_output_datatype_follows_the_config():
    data = encode(make_image(20, 20))
    assert preprocess(data, datatype="FP16").dtype == np.float16
    assert preprocess(data, datatype="FP64").dtype == np.float64


# --- torchvision ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision() -> ModuleType:
    """torchvision's C ops do not load beside the CPU torch wheel here; declare the two it registers at import."""
    torch = pytest.importorskip("torch")
    for op in ("nms", "qnms"):
        # RuntimeError: already defined in this process (by torchvision itself or an earlier run of this fixture)
        with contextlib.suppress(RuntimeError):
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return pytest.importorskip("torchvision")


@pytest.mark.parametrize("size", [(300, 451), (517, 333), (301, 256), (224, 224), (640, 480)], ids=str)
def test_equals_torchvision_transforms(torchvision: ModuleType, size: tuple[int, int]):
    from torchvision import transforms

    image = make_image(*size, seed=size[1])
    pipeline = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    expected = pipeline(image).numpy()
    got = preprocess(encode(image), resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert got.shape == expected.shape == (3, 224, 224)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_equals_torchvision_grayscale_and_rectangular_crop(torchvision: ModuleType):
    from torchvision import transforms

    image = make_image(333, 517, seed=5)
    pipeline = transforms.Compose(
        [transforms.Grayscale(), transforms.Resize(100), transforms.CenterCrop((91, 64)), transforms.ToTensor()]
    )
    got = preprocess(encode(image), color="L", resize=100, crop=(91, 64))
    np.testing.assert_allclose(got, pipeline(image).numpy(), rtol=0, atol=1e-5)


# --- EXIF orientation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1), (3, 2)], ids=["rot90cw", "rot90ccw", "rot180"])
def test_exif_orientation_is_applied(orientation: int, turns: int):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(make_image(60, 40), "JPEG", exif=exif, quality=95)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)  # as stored, 40 rows x 60
    assert stored.shape == (40, 60, 3)
    got = preprocess(data, scale=1.0, layout="NHWC")
    np.testing.assert_array_equal(got, np.rot90(stored, k=turns))


def test_no_exif_leaves_the_image_as_stored():
    data = encode(make_image(60, 40), "JPEG", quality=95)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
    np.testing.assert_array_equal(preprocess(data, scale=1.0, layout="NHWC"), stored)


# --- errors ---------------------------------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels but holds no image data: cheap to make, huge if decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def decode_error(raw: object, **fields: object) -> str:
    with pytest.raises(DecodeError) as info:
        preprocess(raw, **fields)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_corrupt_bytes():
    message = decode_error(b"\x00\x01 definitely not an image \xff" * 10)
    assert "image bytes" in message
    assert "not an image" in message


def test_corrupt_data_behind_a_valid_signature():
    message = decode_error(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    assert "image" in message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path: Path, fmt: str):
    data = encode(make_image(64, 48), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 2 // 3])
    message = decode_error(path)
    assert str(path) in message
    assert "truncated" in message


def test_truncated_bytes():
    data = encode(make_image(64, 48), "JPEG")
    assert "truncated" in decode_error(data[: len(data) // 2])


def test_a_text_file(tmp_path: Path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello, I am not a picture\n" * 20)
    message = decode_error(path)
    assert str(path) in message
    assert "not an image" in message


def test_a_missing_file(tmp_path: Path):
    assert "no such file" in decode_error(tmp_path / "absent.png")


def test_over_the_configured_pixel_limit():
    message = decode_error(encode(make_image(64, 64)), max_pixels=1000)
    assert "64x64" in message
    assert "1000" in message


def test_exactly_at_the_pixel_limit_is_fine():
    assert preprocess(encode(make_image(40, 25)), max_pixels=1000).shape == (3, 25, 40)


@pytest.mark.parametrize(("width", "height"), [(10_000, 10_000), (20_000, 20_000)], ids=["warning-size", "bomb-size"])
def test_decompression_bombs_are_refused_before_decoding(width: int, height: int):
    """Pillow warns above 89M pixels and refuses above 178M; both must be a DecodeError, never a decode attempt."""
    message = decode_error(png_header_only(width, height))
    assert "decompression bomb" in message or "over the limit" in message


def test_a_bomb_under_pillows_limit_but_over_ours():
    message = decode_error(png_header_only(8_000, 8_000))  # 64M pixels > the default 50M
    assert "8000x8000" in message


def test_a_resize_past_the_pixel_limit_is_refused_before_it_is_made():
    """A thin image, a few hundred bytes, that a shorter-side rule scales up: 6000x1 for a detector's min_side 736
    was 4416000x736 pixels, 39 GB as float32, and the process was killed."""
    thin = encode(make_image(400, 1))
    message = decode_error(thin, min_side=100, max_pixels=1_000_000)
    assert (
        message == "image 400x1 would be resized to 40000x100, over the limit of 1000000 pixels (preprocess.max_pixels)"
    )
    assert preprocess(thin, min_side=100, max_pixels=4_000_000).shape == (3, 100, 40000)  # at the limit: made


def test_padding_past_the_pixel_limit_is_refused_before_it_is_made():
    message = decode_error(encode(make_image(400, 1)), letterbox=(64, 64), pad_first=True, max_pixels=100_000)
    assert message == "image 400x1 would be padded to 400x400, over the limit of 100000 pixels (preprocess.max_pixels)"


@pytest.mark.parametrize("raw", [42, None, {"image": "x.png"}, np.zeros((4, 4, 3), np.uint8), ["a.png"]], ids=str)
def test_not_an_image_object(raw: object):
    message = decode_error(raw)
    assert "expected an image" in message


def test_image_smaller_than_the_crop():
    assert "smaller than" in decode_error(encode(make_image(20, 20)), crop=32)


def test_mean_std_of_the_wrong_length_is_a_config_error(tmp_path: Path):
    config = ModelConfig.from_dict({"preprocess": {"kind": "image", "mean": [0.5, 0.5], "std": [0.2]}})
    specs = [TensorSpec("input", DataType.FP32, (-1, 3, 8, 8))]
    with pytest.raises(ConfigError, match="mean"):
        Pipeline(config, specs, specs, tmp_path)


# --- jpeg_draft: JPEG decoded at reduced size -------------------------------------------------------------------------


def test_jpeg_draft_decodes_at_reduced_size_then_runs_the_same_steps():
    """640x480, shorter side to 64, jpeg_draft 2: at least 170x128 is needed, so the JPEG decodes at 1/2 scale; the
    drafted image then goes through the same resize and crop (as one resample of the crop's region: ±1 level)."""
    data = encode(make_image(640, 480), "JPEG", quality=90)
    decoded = decode_scaled(data, 10**8, at_least=lambda width, height: (170, 128))
    assert (decoded.image.size, decoded.size, decoded.scale) == ((320, 240), (640, 480), 2)
    expected = reference(encode(decoded.image.convert("RGB")), resize=64, crop=56)
    got = preprocess(data, resize=64, crop=56, jpeg_draft=2)
    np.testing.assert_allclose(got, expected, atol=1.01 / 255)
    full = preprocess(data, resize=64, crop=56)
    assert 0 < np.abs(got - full).max() < 0.2  # a different decode of the same picture


@pytest.mark.parametrize("size", [(1027, 771), (771, 1027), (2049, 1537)], ids=str)
def test_jpeg_draft_keeps_the_crop_of_full_decoding_when_sides_are_not_multiples_of_the_scale(size: tuple[int, int]):
    """1027x771 decodes at 1/4 as 257x193 (sides rounded up): sized from that, the resize would be 340 wide instead
    of 341 and the crop would sit elsewhere (max |diff| 0.46-0.57 on these gradients); sized from the full image and
    resampled from its exact box, the drafted crop stays within the DCT scaling's blur of full decoding's."""
    data = encode(make_image(*size, seed=3), "JPEG", quality=95)
    full = preprocess(data, resize=256, crop=224)
    drafted = preprocess(data, resize=256, crop=224, jpeg_draft=1)
    assert decode_scaled(data, 10**8, at_least=lambda width, height: (width // 4, height // 4)).scale == 4
    assert np.abs(drafted - full).mean() < 0.01
    assert np.abs(drafted - full).max() < 0.3


def test_jpeg_draft_resamples_only_the_crop_of_a_jpeg_it_decodes_at_full_size():
    """640x480 to 256 then 224: 1/2 scale would be under 2x the resized size, so every pixel is decoded; the crop's
    region is resampled in one step, which differs from resize-then-crop by one level on a few values only."""
    data = encode(make_image(640, 480, seed=4), "JPEG", quality=90)
    decoded = decode_scaled(data, 10**8, at_least=lambda width, height: (width // 2 + 1, height // 2 + 1))
    assert (decoded.scale, decoded.drafted) == (1, True)
    full = preprocess(data, resize=256, crop=224)
    diff = np.abs(preprocess(data, resize=256, crop=224, jpeg_draft=2) - full)
    assert diff.max() < 1.01 / 255
    assert 0 < np.count_nonzero(diff) < 0.001 * diff.size


@pytest.mark.parametrize("field", [{"pad_first": True, "letterbox": [64, 64]}, {"resize_with": "opencv"}], ids=str)
def test_jpeg_draft_is_refused_where_it_cannot_resample_the_decoded_box(field: dict[str, object]):
    with pytest.raises(ValueError, match="jpeg_draft"):
        ImageConfig(kind="image", jpeg_draft=2, **field)  # type: ignore[arg-type]


def test_jpeg_draft_follows_exif_orientation():
    """Stored 800x200 and turned a quarter by EXIF: shown 200x800. Asked for 50x200 as shown, the decoder scales by
    1/4 (stored 200x50); read without the turn, the request would forbid any scaling."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(make_image(800, 200), "JPEG", exif=exif, quality=90)
    decoded = decode_scaled(data, 10**8, at_least=lambda width, height: (width // 4, height // 4))
    assert (decoded.image.size, decoded.size, decoded.scale) == ((50, 200), (200, 800), 4)
    assert decode_image(data, 10**8).size == (200, 800)


def test_jpeg_draft_leaves_other_formats_alone():
    data = encode(make_image(640, 480))
    decoded = decode_scaled(data, 10**8, at_least=lambda width, height: (10, 10))
    assert (decoded.image.size, decoded.size, decoded.scale, decoded.drafted) == ((640, 480), (640, 480), 1, False)
    np.testing.assert_array_equal(preprocess(data, resize=64, jpeg_draft=1), preprocess(data, resize=64))
