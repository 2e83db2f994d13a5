"""API fuzzing of the inference server with schemathesis, from its own OpenAPI schema, in-process (ASGI: no socket).

Every operation gets up to ``MAX_EXAMPLES`` generated requests (valid and invalid: odd query values, missing fields,
wrong content types); none may get a 5xx, and every answer carries the security headers. The schema says only
"bytes" for the file fields, so the test marks them with a format of its own whose strategy draws real image files
(every format and mode the server opens, sizes on both sides of the pixel limits) and then damages some of them
(truncated, bytes flipped, garbage appended, a header without its pixels).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("httpx")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from imgcls.export.bench import init_checkpoint  # noqa: E402
from imgcls.serve.app import create_app  # noqa: E402

MAX_EXAMPLES = 25
MAX_PIXELS = 256 * 256  # small limits, so that generated images cross them often and the test stays fast
MAX_REQUEST_PIXELS = 3 * MAX_PIXELS
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "ICO"]
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"]


def _encode(fmt: str, mode: str, width: int, height: int, seed: int) -> bytes:
    """An image file; a mode the format cannot store falls back to RGB, a format that cannot save it to PNG."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    for fmt_, mode_ in ((fmt, mode), (fmt, "RGB"), ("PNG", mode), ("PNG", "RGB")):
        try:
            buf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 12 deprecates saving mode I as PNG
                im.convert(mode_).save(buf, format=fmt_)
            return buf.getvalue()
        except (OSError, ValueError, KeyError):
            continue
    raise AssertionError("PNG RGB always saves")


@st.composite
def image_files(draw: st.DrawFn) -> bytes:
    fmt, mode = draw(st.sampled_from(FORMATS)), draw(st.sampled_from(MODES))
    side = st.one_of(st.integers(1, 64), st.integers(200, 700))  # small ones, and ones around the limits
    data = _encode(fmt, mode, draw(side), draw(side), draw(st.integers(0, 2**16)))
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "append", "header"]))
    if damage == "truncate":
        data = data[: draw(st.integers(1, max(1, len(data) - 1)))]
    elif damage == "flip":
        b = bytearray(data)
        for i in draw(st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=8)):
            b[i] ^= draw(st.integers(1, 255))
        data = bytes(b)
    elif damage == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    elif damage == "header":
        data = data[: min(len(data), 64)]
    return data


schemathesis.openapi.format("imgcls-image", image_files())


def _mark_image_fields(schema: dict) -> dict:
    """The file fields of the app's schema (``contentMediaType: application/octet-stream``) get the test's format."""
    for body in schema["components"]["schemas"].values():
        for prop in body.get("properties", {}).values():
            for field in (prop, prop.get("items", {})):
                if field.get("contentMediaType") == "application/octet-stream":
                    field["format"] = "imgcls-image"
    return schema


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A randomly initialised simple_cnn_tiny on digits (as in test_serve.py)."""
    return init_checkpoint(tmp_path_factory.mktemp("serve_fuzz") / "tiny.pt", ["model.name=simple_cnn_tiny"])


@pytest.fixture(scope="module")
def api_schema(ckpt):
    app = create_app(
        ckpt,
        max_batch=8,
        max_wait_ms=1,
        max_body_bytes=2_000_000,
        max_pixels=MAX_PIXELS,
        max_request_pixels=MAX_REQUEST_PIXELS,
    )
    app.openapi_schema = _mark_image_fields(app.openapi())  # what /openapi.json serves from now on
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damaged TIFFs as it rejects them
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_server_errors(case):
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    for name in ("x-content-type-options", "x-frame-options", "referrer-policy", "content-security-policy"):
        assert name in response.headers, (name, response.status_code)
