"""Image loading shared by extraction, training, RL and serving: validate, convert, resize.

Every image enters the system through ``load_image`` so a corrupt or missing file fails with the
same clear message everywhere, and every model sees the same pixels.
"""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Decompression bombs: refuse images whose pixel count is absurd for a product photo.
Image.MAX_IMAGE_PIXELS = 64_000_000


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the problem."""


def decode_image(data: bytes, max_side: int, source: str = "<bytes>") -> Image.Image:
    """Decode bytes into an RGB image whose longest side is at most ``max_side``."""
    if not data:
        raise ImageError(f"{source}: empty image data")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        pixels = image.width * image.height
        if pixels > Image.MAX_IMAGE_PIXELS:  # refused before a byte is decompressed
            raise ImageError(f"{source}: {image.width}x{image.height} pixels is over the "
                             f"{Image.MAX_IMAGE_PIXELS} limit (decompression bomb?)")
        image.load()
    except UnidentifiedImageError:
        raise ImageError(f"{source}: not a readable image (unknown or corrupt format)") from None
    except (OSError, Image.DecompressionBombError) as error:
        raise ImageError(f"{source}: not a readable image ({error})") from None
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image


def load_image(path: str | Path, max_side: int) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    return decode_image(path.read_bytes(), max_side, str(path))


def image_error(path: str | Path) -> str | None:
    """None if the file is a readable image, else the reason (for per-row error columns)."""
    try:
        load_image(path, max_side=1 << 16)
    except ImageError as error:
        return str(error)
    return None
