"""``imgcls export --format web``: a static folder that classifies images in the browser, offline.

The folder holds the verified ONNX export of the checkpoint, its preprocessing and class names, a few of the
checkpoint's own test images, the page (``index.html``, ``app.js``) and onnxruntime-web's JavaScript API with its
WebAssembly runtime, taken from the npm registry's ``onnxruntime-web`` package (version :data:`ORT_WEB_VERSION`):
``npm pack`` fetches the package once (npm keeps the tarball in its own cache), the few files the page needs are
unpacked into ``$IMGCLS_CACHE/npm/onnxruntime-web-<version>/`` (default ``~/.cache/imgcls``) and later exports copy
them from there. Nothing is loaded from a CDN or a server: the page works from ``file://`` and from any static host.

``file://`` pages may not ``fetch()`` local files nor import local ES modules (Chromium blocks both: the page's
origin is opaque), but they may run classic ``<script src>`` files. So the model, the WebAssembly binary and
onnxruntime's Emscripten glue module are also written as script data (base64 / a string) that the page hands to
onnxruntime-web (``InferenceSession.create(bytes)``, ``env.wasm.wasmBinary``, ``env.wasm.wasmPaths.mjs`` as a blob
URL), and the sample images are data URLs (a ``file://`` image would taint the canvas the page reads pixels from).
The runtime runs single-threaded: WebAssembly threads need cross-origin isolation, which a ``file://`` page cannot
have.

The page repeats imgcls's eval preprocessing in JavaScript rather than relying on the canvas's own scaling (which is
unspecified and differs between browsers): alpha composited on white, ITU-R 601 luma for one-channel models (Pillow's
``convert("L")``), the antialiased resize of torchvision/Pillow (separable, horizontal then vertical, rounded to
uint8 in between), then ``(x / 255 - mean) / std``. ``tests/test_export_web.py`` checks in headless Chromium that its
probabilities equal ``imgcls predict``'s.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from imgcls.config import UserFacingError
from imgcls.data.datasets import cache_dir
from imgcls.engine.checkpoint import CheckpointError
from imgcls.export.onnx import ExportResult, export_checkpoint, reference_view

ORT_WEB_PACKAGE = "onnxruntime-web"
#: pinned, so every export of a model runs the same runtime; the page, its test and the README name it
ORT_WEB_VERSION = "1.30.0"
#: what the page needs of the package: the wasm-only build of the JS API as a classic script (``ort`` global; classic
#: scripts load from file://; its header carries Microsoft's copyright and MIT licence notice), the Emscripten glue
#: module it imports, its WebAssembly binary, and package.json (name, version, licence)
ORT_FILES = (
    "dist/ort.wasm.min.js",
    "dist/ort-wasm-simd-threaded.mjs",
    "dist/ort-wasm-simd-threaded.wasm",
    "package.json",
)
#: how long ``npm pack`` may take (a 33 MB tarball on a slow link)
NPM_TIMEOUT_S = 600
#: interpolations the page implements (as torchvision's antialiased resize does them)
WEB_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
STATIC_DIR = Path(__file__).parent / "web_static"


class WebExportError(UserFacingError):
    """The web export cannot be made (npm missing or failing, a preprocessing the page does not implement)."""


# --------------------------------------------------------------------------------------------------------------------
# onnxruntime-web from the npm registry, cached
# --------------------------------------------------------------------------------------------------------------------


def ort_web_cache(version: str = ORT_WEB_VERSION) -> Path:
    """Where the unpacked onnxruntime-web files of ``version`` are kept."""
    return cache_dir() / "npm" / f"{ORT_WEB_PACKAGE}-{version}"


def ort_web_files(version: str = ORT_WEB_VERSION, *, npm: str | None = None) -> Path:
    """The folder holding :data:`ORT_FILES` (by their base names) of onnxruntime-web ``version``: from the cache, else
    fetched with ``npm pack`` and unpacked there (atomically: a half-written folder is never used).

    Args:
        version: the npm package version.
        npm: the npm executable (default: ``npm`` on PATH).

    Raises:
        WebExportError: npm is not installed, or ``npm pack`` failed (registry unreachable, unknown version).
    """
    root = ort_web_cache(version)
    if all((root / Path(f).name).is_file() for f in ORT_FILES):
        return root
    npm = npm or shutil.which("npm")
    if npm is None:
        raise WebExportError(
            f"the web export takes {ORT_WEB_PACKAGE} from the npm registry, and npm was not found: install Node.js and "
            "npm (e.g. apt-get install npm), then run the export again"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.") as tmp:
        spec = f"{ORT_WEB_PACKAGE}@{version}"
        try:
            proc = subprocess.run(
                [npm, "pack", spec, "--pack-destination", tmp, "--json", "--loglevel=error"],
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise WebExportError(
                f"npm pack {spec} took more than {NPM_TIMEOUT_S} s: is the npm registry reachable?"
            ) from e
        if proc.returncode != 0:
            said = next((ln for ln in reversed(proc.stderr.strip().splitlines()) if ln.strip()), "no message")
            raise WebExportError(
                f"npm pack {spec} failed ({said.strip()[:200]}): is the npm registry reachable? (npm config get "
                "registry; behind a proxy: npm config set proxy URL)"
            )
        packed = json.loads(proc.stdout)[0]
        staging = Path(tmp) / "files"
        staging.mkdir()
        with tarfile.open(Path(tmp) / packed["filename"], "r:gz") as tar:
            for name in ORT_FILES:  # only these members, read as bytes: nothing in the archive picks a path
                member = tar.extractfile(f"package/{name}")
                if member is None:
                    raise WebExportError(f"{spec} has no {name}: this version does not fit the page")
                (staging / Path(name).name).write_bytes(member.read())
        source = {"package": ORT_WEB_PACKAGE, "version": packed.get("version", version)}
        source |= {k: packed[k] for k in ("integrity", "shasum") if k in packed}
        (staging / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
        try:
            os.replace(staging, root)
        except OSError:  # another export filled the cache meanwhile (a non-empty folder is not replaced)
            if not all((root / Path(f).name).is_file() for f in ORT_FILES):
                raise
    return root


# --------------------------------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class WebExportResult:
    out: Path
    onnx: ExportResult
    ort_version: str
    samples: list[dict[str, Any]] = field(default_factory=list)  # name, label, file (relative to out)

    def lines(self) -> list[str]:
        files = sorted(p for p in self.out.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in files)
        return [
            f"{len(files)} files, {size / 1e6:.1f} MB: the page, the model ({self.onnx.path.name}), "
            f"{len(self.samples)} sample images, onnxruntime-web {self.ort_version} (from the npm registry)",
            f"open {self.out / 'index.html'} in a browser (file:// works) or put the folder on any static host",
        ]


def _js_data(name: str, value: Any) -> str:
    """A classic script that sets ``window[name] = value`` (JSON): data a file:// page can load."""
    return f"window.{name} = {json.dumps(value, separators=(',', ':'))};\n"


def _sample_images(config: dict[str, Any], classes: list[str], count: int) -> list[tuple[str, str, bytes]]:
    """Up to ``count`` images of the checkpoint's test split (val, then train, when it has none), one per class first
    -> (file name, true label, PNG bytes) at the size they are stored."""
    view, _, _ = reference_view(config, split="test", limit=max(count * 8, count))
    picked: list[int] = []
    seen: set[int] = set()
    for i in range(len(view)):  # one of each class first, then the next ones
        _, y = view.get(i)
        if int(y) not in seen:
            seen.add(int(y))
            picked.append(i)
        if len(picked) == count:
            break
    picked += [i for i in range(len(view)) if i not in picked][: count - len(picked)]
    out = []
    for n, i in enumerate(picked):
        x, y = view.get(i)
        arr = x.permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
        out.append((f"{n:02d}-{classes[int(y)]}.png", classes[int(y)], buf.getvalue()))
    return out


def export_web(
    checkpoint: str | Path,
    out: str | Path,
    *,
    samples: int = 8,
    atol: float = 1e-3,
    num_images: int = 128,
    ort_version: str = ORT_WEB_VERSION,
) -> WebExportResult:
    """Write the in-browser classifier of a checkpoint to the folder ``out``.

    Args:
        checkpoint: a checkpoint file or run folder.
        out: the folder to write (created; files of an earlier web export in it are replaced).
        samples: how many of the checkpoint's test images to bundle as examples (0: none).
        atol, num_images: the ONNX parity check's (see :func:`imgcls.export.onnx.export_checkpoint`).
        ort_version: the onnxruntime-web version from the npm registry.

    Raises:
        WebExportError: npm is missing or failing, or the checkpoint's interpolation is one the page lacks.
        ExportError, ExportParityError, CheckpointError: as for the ONNX export.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WebExportError(f"--out {out} is a file: the web export writes a folder")
    ort_dir = ort_web_files(ort_version)  # first: a missing npm should not cost an export
    out.mkdir(parents=True, exist_ok=True)
    onnx = export_checkpoint(checkpoint, fmt="onnx", out=out / "model.onnx", atol=atol, num_images=num_images)
    meta = onnx.metadata
    pre = dict(meta["preprocess"])
    if pre.get("interpolation", "bilinear") not in WEB_INTERPOLATIONS:
        raise WebExportError(
            f"the page resizes with {', '.join(WEB_INTERPOLATIONS)}; this model was trained with {pre['interpolation']}"
        )
    try:
        bundled = _sample_images(meta["config"], meta["classes"], samples) if samples > 0 else []
    except (FileNotFoundError, OSError) as e:
        raise CheckpointError(f"cannot bundle sample images: the checkpoint's data is not available ({e})") from e
    (out / "samples").mkdir(exist_ok=True)
    sample_rows = []
    for name, label, png in bundled:
        (out / "samples" / name).write_bytes(png)
        sample_rows.append({"name": name, "label": label, "file": f"samples/{name}"})
    ort_source = json.loads((ort_dir / "SOURCE.json").read_text())
    info = {
        "model": meta["model"],
        "classes": meta["classes"],
        "preprocess": {**pre, "resize": True},  # images from anywhere: always resized, as imgcls predict does
        "dataset": (meta["config"].get("data") or {}).get("name"),
        "source_checkpoint": meta.get("source_checkpoint"),
        "parity": {"max_abs_logit_diff": onnx.report.max_abs_diff if onnx.report else None, "atol": atol},
        "onnxruntime_web": ort_source,
        "samples": sample_rows,
    }
    (out / "imgcls.json").write_text(json.dumps(info, indent=2) + "\n")
    page_info = {
        **info,
        "samples": [
            {**s, "url": "data:image/png;base64," + base64.b64encode(png).decode()}
            for s, (_, _, png) in zip(sample_rows, bundled, strict=True)
        ],
    }
    (out / "imgcls.js").write_text(_js_data("IMGCLS", page_info))
    (out / "model.js").write_text(_js_data("IMGCLS_MODEL", base64.b64encode(onnx.path.read_bytes()).decode()))
    ort_out = out / "ort"
    ort_out.mkdir(exist_ok=True)
    for name in ("ort.wasm.min.js", "package.json", "SOURCE.json"):
        shutil.copyfile(ort_dir / name, ort_out / name)
    runtime = {
        "version": ort_source["version"],
        "glue": (ort_dir / "ort-wasm-simd-threaded.mjs").read_text(encoding="utf-8"),
        "wasm": base64.b64encode((ort_dir / "ort-wasm-simd-threaded.wasm").read_bytes()).decode(),
    }
    (ort_out / "ort-wasm.js").write_text(_js_data("IMGCLS_ORT", runtime))
    for name in ("index.html", "app.js"):
        shutil.copyfile(STATIC_DIR / name, out / name)
    return WebExportResult(out=out, onnx=onnx, ort_version=ort_source["version"], samples=sample_rows)
