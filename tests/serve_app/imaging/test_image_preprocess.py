"""The preprocess stage's library (serve_app/imaging), as pure functions: decoding, limits, colour modes,
orientation, resize/crop."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from serve_app.contract import InvalidImage
from serve_app.imaging.decode import open_header
from serve_app.imaging.pipeline import preprocess_image
from serve_app.imaging.resize import resize_crop
from serve_app.stages.options import PreprocessOptions
from tests.fake_manifest import vision_spec
from tests.serve_app.image_samples import bomb_png, data_url, encode, gradient_rgb, png_url

SIZE = 16
OPTS = PreprocessOptions()


def run(url: str, opts: PreprocessOptions = OPTS):
    return preprocess_image(url, vision_spec(SIZE), opts, param="messages.0.content.1.image_url")


def code_of(url: str, opts: PreprocessOptions = OPTS) -> str:
    with pytest.raises(InvalidImage) as e:
        run(url, opts)
    assert e.value.param == "messages.0.content.1.image_url"
    return e.value.code


@pytest.mark.parametrize("fmt,mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_accepted_formats_give_uint8_chw_and_hash(fmt, mime):
    out = run(data_url(encode(gradient_rgb(), fmt), mime))
    assert out.views.shape == (1, 3, SIZE, SIZE) and out.views.dtype == np.uint8
    assert out.views.flags.c_contiguous
    assert out.content_hash == hashlib.sha256(out.views.tobytes()).hexdigest()
    assert out.source_pixels == 48 * 32


def test_same_image_same_hash_different_image_different_hash():
    assert run(png_url(seed=1)).content_hash == run(png_url(seed=1)).content_hash
    assert run(png_url(seed=1)).content_hash != run(png_url(seed=2)).content_hash


def test_resize_short_side_then_center_crop():
    # left third red, middle green, right third blue: the center crop of a 3:1 image keeps only green
    a = np.zeros((20, 100, 3), np.uint8)  # the crop keeps columns 40..60, well inside the green band
    a[:, :30, 0], a[:, 30:70, 1], a[:, 70:, 2] = 255, 255, 255
    px = resize_crop(Image.fromarray(a), SIZE)
    assert px.shape == (3, SIZE, SIZE)
    assert px[1].min() >= 250 and px[0].max() <= 5 and px[2].max() <= 5


def test_rgba_transparent_is_white():
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert (run(data_url(encode(img))).views[0] == 255).all()


def test_palette_grayscale_cmyk_convert_to_rgb():
    pal = Image.new("P", (8, 8), 3)
    pal.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 200, 100, 50] + [0] * (256 * 3 - 12))
    px = run(data_url(encode(pal))).views[0]
    assert tuple(px[:, 0, 0]) == (200, 100, 50)
    gray = run(data_url(encode(Image.new("L", (8, 8), 77)))).views[0]
    assert (gray == 77).all()
    cmyk = run(data_url(encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG"), "image/jpeg")).views[0]
    assert cmyk.min() >= 250  # no ink = white


def test_16bit_grayscale_is_rescaled_not_clipped():
    a = np.full((8, 8), 32768, np.uint16)  # mid-gray in 16 bits; a plain convert would clip it to 255
    img = Image.fromarray(a)  # mode I;16
    assert img.mode == "I;16"
    px = run(data_url(encode(img))).views[0]
    assert np.all(np.abs(px.astype(int) - 128) <= 1)


def test_exif_orientation_is_applied():
    a = np.zeros((10, 30, 3), np.uint8)  # wide: red left half, blue right half
    a[:, :15, 0], a[:, 15:, 2] = 255, 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the wide image shows as tall
    raw = encode(Image.fromarray(a), "JPEG", exif=exif.tobytes(), quality=95)
    out = run(data_url(raw, "image/jpeg"))
    # displayed tall with red on top: after the short-side resize + crop, top rows are red, bottom rows blue
    top, bottom = out.views[0][:, 0, SIZE // 2], out.views[0][:, -1, SIZE // 2]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_not_an_image():
    assert code_of(data_url(b"hello, I am text")) == "invalid_image"


def test_not_base64_and_not_a_data_url():
    assert code_of("data:image/png;base64,@@@###") == "invalid_base64"
    assert code_of("data:image/png,rawdata") == "invalid_image_url"
    assert code_of("ftp://example.com/a.png") == "invalid_image_url"


def test_truncated_image():
    raw = encode(gradient_rgb(64, 64))
    assert code_of(data_url(raw[: len(raw) // 2])) == "invalid_image"


@pytest.mark.parametrize("fmt,save_args", [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}),
                                           ("WEBP", {})], ids=["jpeg", "jpeg-progressive", "png", "webp"])
def test_every_cut_of_a_real_image_is_a_400_or_decodes(fmt, save_args):
    # A cut inside a header segment fails in Image.open itself (OSError "Truncated File Read", WebP's "could not
    # create decoder object"), before any pixel is decoded; a cut in the scan data fails in load().
    raw = encode(gradient_rgb(40, 24, seed=1), fmt, **save_args)
    for n in range(1, len(raw), max(1, len(raw) // 300)):
        try:
            run(data_url(raw[:n]))
        except InvalidImage as e:
            assert e.code == "invalid_image", (n, e.code)


def test_unsupported_format_is_named():
    with pytest.raises(InvalidImage) as e:
        run(data_url(encode(gradient_rgb(), "GIF"), "image/gif"))
    assert e.value.code == "unsupported_image_format" and "GIF" in e.value.message


def test_byte_limit():
    url = png_url(64, 64)
    assert code_of(url, PreprocessOptions(max_image_bytes=1000)) == "image_too_large"


def test_pixel_limit_checked_before_decoding(monkeypatch):
    raw = bomb_png()
    assert len(raw) < 200_000  # tiny on the wire, 400M pixels inside
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    with pytest.raises(InvalidImage) as e:
        run(data_url(raw))
    assert e.value.code == "image_too_many_pixels" and decoded == []


def test_pixel_limit_small():
    assert code_of(png_url(64, 64), PreprocessOptions(max_image_pixels=1000)) == "image_too_many_pixels"


def test_remote_urls_refused_by_default():
    assert code_of("https://example.com/cat.png") == "remote_url_disabled"


def test_header_only_open_does_not_decode():
    img = open_header(bomb_png(3000), "p", 10_000_000)
    assert img.size == (3000, 3000)
    assert isinstance(img.fp, io.BytesIO)  # still lazily attached to the source: pixels not decoded yet


@pytest.fixture
def image_server():
    """A loopback HTTP server with one PNG: remote fetching without leaving the machine."""
    import http.server
    import threading

    raw = encode(gradient_rgb(40, 40))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 -- http.server's naming
            body = raw if self.path == "/cat.png" else b"nope"
            self.send_response(200 if self.path == "/cat.png" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", len(raw)
    server.shutdown()


def test_remote_url_fetched_when_allowed_with_the_same_limits(image_server):
    base, size = image_server
    allowed = PreprocessOptions(allow_remote_urls=True)
    assert run(f"{base}/cat.png", allowed).source_bytes == size
    assert code_of(f"{base}/cat.png", PreprocessOptions(allow_remote_urls=True, max_image_bytes=size - 1)) == \
        "image_too_large"
    assert code_of(f"{base}/missing.png", allowed) == "image_fetch_failed"


@pytest.mark.parametrize("resize", ["crop", "pad", "resize"])
def test_the_manifests_resize_mode_is_applied(resize):
    # a 32x16 image, left half red and right half blue: crop keeps the middle, pad keeps all of it with black bars
    # above and below, resize stretches it over the whole square
    a = np.zeros((16, 32, 3), np.uint8)
    a[:, :16, 0] = 255
    a[:, 16:, 2] = 255
    px = preprocess_image(data_url(encode(Image.fromarray(a))), vision_spec(SIZE, resize=resize), OPTS).views[0]  # (3,S,S)
    assert px.shape == (3, SIZE, SIZE)
    top, middle = px[:, 0, SIZE // 8], px[:, SIZE // 2, SIZE // 8]  # (3,) near the left edge
    if resize == "pad":
        assert top.tolist() == [0, 0, 0] and middle[0] > 200  # a black bar, then the red half
    else:
        assert top[0] > 200 and middle[0] > 200  # red from the top
    left_blue = px[2, SIZE // 2, SIZE // 8]
    assert left_blue < 50  # the left edge is red in every mode: crop takes the middle 16 of 32 columns
