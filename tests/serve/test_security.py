"""Decompression bombs are refused from the image header, before any pixel is decoded, and
encoded path tricks stay inside serve.image_root (see docs/security.md for the threat model)."""
from __future__ import annotations

import io
import struct
import zlib

import pytest
import requests
from PIL import Image

from afmrl.data.images import ImageError, decode_image


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
            chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG with its frame header (SOF0) rewritten to claim width x height."""
    encoded = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(encoded, "JPEG", optimize=False)
    data = bytearray(encoded.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("bomb", [
    png_declaring(10_000, 10_000),    # 100 Mpx: PIL itself would only warn and decode
    png_declaring(100_000, 100_000),  # 10 Gpx
    jpeg_declaring(65_000, 65_000),
])
def test_decompression_bombs_are_refused_from_the_header(bomb):
    assert len(bomb) < 1024
    with pytest.raises(ImageError, match="pixels|decompression bomb"):
        decode_image(bomb, 512, "bomb.png")


def test_ordinary_photos_still_decode():
    photo = io.BytesIO()
    Image.new("RGB", (640, 480), (0, 90, 200)).save(photo, "PNG")
    assert decode_image(photo.getvalue(), 512).size == (512, 384)


def test_a_bomb_upload_is_a_400_and_the_app_stays_up(live_app):
    for bomb in (png_declaring(10_000, 10_000), jpeg_declaring(65_000, 65_000)):
        response = requests.post(f"{live_app.url}/search/image", timeout=60,
                                 files={"image": ("bomb.png", bomb)})
        assert response.status_code == 400 and "pixels" in response.json()["error"]
    assert requests.get(f"{live_app.url}/healthz", timeout=60).json()["status"] == "ok"


@pytest.mark.parametrize("path", ["%2e%2e/outside.jpg", "..%2foutside.jpg", "%2e%2e%2foutside.jpg",
                                  "images/../../outside.jpg", "./../outside.jpg",
                                  "..\\outside.jpg", "escape.jpg/."])
def test_encoded_and_dotted_paths_stay_inside_the_image_root(live_app, path):
    """Percent-escapes in a JSON body are literal characters: they name files inside the root
    (which do not exist), never the parent folder."""
    response = requests.post(f"{live_app.url}/search", json={"image_path": path}, timeout=60)
    assert response.status_code == 404, response.text
    assert str(live_app.image_root.parent) not in response.text
