"""A model registry on MLflow's: named models with numbered versions and aliases (``prod``, ``candidate``), each
version an imgcls checkpoint with its model card, summary and config, stored as MLflow artifacts.

Where: ``$IMGCLS_REGISTRY_URI``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store ``runs/registry.db`` in the
current folder, with its artifacts in ``runs/registry-artifacts/`` beside it (:data:`DEFAULT_DB`). Any MLflow
tracking URI works (a server, a database); nothing needs the internet with the default.

Every command that takes a checkpoint also takes ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (MLflow's own URI
form): :func:`imgcls.engine.checkpoint.load_checkpoint` resolves it here to a local copy of the version's files under
``$IMGCLS_CACHE/models/`` (a run-folder layout: ``checkpoints/best.pt``, ``summary.json``, ``MODEL_CARD.md``), so
outputs that go "beside the checkpoint" (evaluation, exports, explanations) land in that copy and never in the
registry's store. The checkpoint is then loaded as any other, safely (``weights_only``) and verified by its content
hash, which must also equal the hash the version was registered with.

Needs MLflow (``pip install 'imgcls[registry]'``); without it, these functions raise :class:`RegistryError` saying so.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.config import UserFacingError
from imgcls.data.datasets import cache_dir

#: the default store, relative to the current folder (beside ``run.dir``'s default, ``runs``)
DEFAULT_DB = Path("runs") / "registry.db"
#: the MLflow experiment that holds one MLflow run per registered version
EXPERIMENT = "imgcls-registry"
#: where in a version's artifacts its files are (``<source>/checkpoints/best.pt``, ``<source>/MODEL_CARD.md``, ...)
ARTIFACT_DIR = "model"
CHECKPOINT_FILE = "checkpoints/best.pt"
#: MLflow's URI forms: models:/NAME@ALIAS and models:/NAME/VERSION
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?$")
INSTALL_HINT = "the model registry needs MLflow: pip install 'imgcls[registry]' (or pip install mlflow)"


class RegistryError(UserFacingError):
    """A registry that cannot be reached or read, a model, version or alias that does not exist, or no MLflow."""


def is_model_uri(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` is a registry reference (``models:/...``) rather than a path."""
    return str(text).startswith("models:/")


def parse_model_uri(text: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/VERSION`` -> (NAME, None, VERSION).

    Raises:
        RegistryError: another form, naming the two valid ones.
    """
    m = MODEL_URI.match(str(text))
    if not m:
        raise RegistryError(f"bad model reference '{text}': use models:/NAME@ALIAS or models:/NAME/VERSION")
    return m["name"], m["alias"], m["version"]


def registry_uri(uri: str | None = None) -> str:
    """The store to use: ``uri``, else ``$IMGCLS_REGISTRY_URI``, else ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///<cwd>/runs/registry.db``."""
    chosen = uri or os.environ.get("IMGCLS_REGISTRY_URI") or os.environ.get("MLFLOW_TRACKING_URI")
    return chosen or f"sqlite:///{DEFAULT_DB.resolve()}"


def _client(uri: str) -> Any:
    if importlib.util.find_spec("mlflow") is None:
        raise RegistryError(INSTALL_HINT)
    import mlflow  # optional: the [registry] extra (and seconds of import that only registry commands pay)

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (creating tables ...) are not for users
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifact_root(uri: str) -> str | None:
    """Artifacts of the default SQLite store go beside the database (MLflow's default would be ./mlruns, wherever
    the command runs); other stores keep their own default."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "registry-artifacts").resolve().as_uri()
    return None


def _experiment_id(client: Any, uri: str) -> str:
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(EXPERIMENT, artifact_location=_artifact_root(uri))


@dataclass
class VersionInfo:
    """One registered version: its name, number, aliases, where its files are and what was recorded with it."""

    name: str
    version: str
    source: str
    run_id: str | None
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    created: float = 0.0  # seconds since the epoch

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _info(v: Any) -> VersionInfo:
    return VersionInfo(
        name=v.name,
        version=str(v.version),
        source=v.source,
        run_id=v.run_id,
        aliases=list(getattr(v, "aliases", []) or []),
        tags=dict(v.tags or {}),
        created=(v.creation_timestamp or 0) / 1000,
    )


def register(
    name: str,
    files: Mapping[str, Path],
    *,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    description: str = "",
    uri: str | None = None,
) -> VersionInfo:
    """Register a new version of model ``name``: one MLflow run (``params``, ``metrics``, ``tags``) whose artifacts
    are ``files`` (path inside the version -> local file; ``checkpoints/best.pt`` among them), and a model version
    pointing at them, with ``tags`` and ``description`` (the model card).

    Raises:
        RegistryError: no MLflow, a name MLflow refuses, or a store that cannot be written.
    """
    if CHECKPOINT_FILE not in files:
        raise ValueError(f"a registered version needs {CHECKPOINT_FILE}")
    uri = registry_uri(uri)
    client = _client(uri)
    from mlflow.entities import Metric, Param  # optional: the [registry] extra
    from mlflow.exceptions import MlflowException

    try:
        run = client.create_run(_experiment_id(client, uri), run_name=f"{name}-{tags.get('imgcls_run', '')}")
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            params=[Param(k, str(v)[:500]) for k, v in params.items()],  # MLflow caps a value at 500 characters
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        )
        for inside, local in files.items():
            folder = str(Path(ARTIFACT_DIR, inside).parent.as_posix())
            client.log_artifact(run_id, str(local), artifact_path=folder)
        client.set_terminated(run_id)
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description=f"imgcls model '{name}'")
        version = client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/{ARTIFACT_DIR}",
            run_id=run_id,
            tags=dict(tags),
            description=description,
        )
    except MlflowException as e:
        raise RegistryError(f"could not register '{name}' in {uri}: {e.message}") from e
    return _info(version)


def get_version(
    name: str, *, version: str | None = None, alias: str | None = None, uri: str | None = None
) -> VersionInfo:
    """A version of ``name`` by number or alias.

    Raises:
        RegistryError: the model, version or alias does not exist (naming what does).
    """
    uri = registry_uri(uri)
    client = _client(uri)
    from mlflow.exceptions import MlflowException  # optional: the [registry] extra

    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as e:
        raise RegistryError(_missing(client, name, version, alias, uri)) from e
    return _info(found)


def _missing(client: Any, name: str, version: str | None, alias: str | None, uri: str) -> str:
    names = [m.name for m in client.search_registered_models()]
    if name not in names:
        known = ", ".join(names) or "none yet: imgcls registry register RUN --name NAME"
        return f"no registered model '{name}' in {uri}; registered: {known}"
    versions = [_info(v) for v in client.search_model_versions(f"name='{name}'")]
    if alias:
        aliases = sorted({a for v in versions for a in v.aliases})
        return (
            f"model '{name}' has no alias '{alias}'; its aliases: {', '.join(aliases) or 'none'} (set one with "
            f"imgcls registry alias {name} VERSION {alias})"
        )
    numbers = sorted(int(v.version) for v in versions)
    return f"model '{name}' has no version {version}; its versions: {', '.join(map(str, numbers))}"


def list_versions(uri: str | None = None) -> list[VersionInfo]:
    """Every version of every registered model, by name then version number, with its aliases."""
    client = _client(registry_uri(uri))
    versions = []
    for m in client.search_registered_models():
        aliases = getattr(m, "aliases", None) or {}  # alias -> version (version searches leave aliases out)
        for v in client.search_model_versions(f"name='{m.name}'"):
            info = _info(v)
            info.aliases = sorted({*info.aliases, *(a for a, n in aliases.items() if str(n) == info.version)})
            versions.append(info)
    return sorted(versions, key=lambda v: (v.name, int(v.version)))


def set_alias(name: str, version: str, alias: str, uri: str | None = None) -> VersionInfo:
    """Point ``alias`` of model ``name`` at ``version`` (moving it from another version if it was set).

    Raises:
        RegistryError: the model or version does not exist, or MLflow refuses the alias (e.g. ``latest``, or one
            that looks like a version number).
    """
    uri = registry_uri(uri)
    client = _client(uri)
    from mlflow.exceptions import MlflowException  # optional: the [registry] extra

    get_version(name, version=version, uri=uri)
    try:
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as e:
        raise RegistryError(f"cannot set alias '{alias}': {e.message}") from e
    return get_version(name, alias=alias, uri=uri)


@dataclass
class ResolvedModel:
    """A registry reference resolved to the local copy of its version."""

    version: VersionInfo
    folder: Path  # the local copy (run-folder layout)
    checkpoint: Path  # folder / checkpoints/best.pt
    sha256: str | None  # the content hash the version was registered with


def resolve(reference: str, uri: str | None = None) -> ResolvedModel:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> the local copy of that version's files, downloaded from
    the store on first use into ``$IMGCLS_CACHE/models/<store>/<NAME>/<VERSION>/`` (reused afterwards: a version's
    files never change).

    Raises:
        RegistryError: a malformed reference, or a model, version or alias that does not exist.
    """
    name, alias, number = parse_model_uri(reference)
    uri = registry_uri(uri)
    info = get_version(name, version=number, alias=alias, uri=uri)
    store = hashlib.sha256(uri.encode()).hexdigest()[:12]
    folder = cache_dir() / "models" / store / name / info.version
    checkpoint = folder / CHECKPOINT_FILE
    if not checkpoint.is_file():
        import mlflow.artifacts  # optional: the [registry] extra

        partial = folder.with_name(f".{info.version}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted download
        partial.mkdir(parents=True)
        # MLflow puts a folder artifact into dst_path/<its base name>
        got = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=info.source, dst_path=str(partial), tracking_uri=uri)
        )
        if not (got / CHECKPOINT_FILE).is_file():
            raise RegistryError(f"{reference} (version {info.version}) has no {CHECKPOINT_FILE} at {info.source}")
        os.replace(got, folder)  # a copy is whole or absent, even if a download is interrupted
        shutil.rmtree(partial, ignore_errors=True)
    return ResolvedModel(version=info, folder=folder, checkpoint=checkpoint, sha256=info.tags.get("checkpoint_sha256"))
