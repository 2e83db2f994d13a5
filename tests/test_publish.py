"""Model cards (Hugging Face format, numbers equal to the run's) and the MLflow model registry behind
``models:/NAME@ALIAS`` references (register two runs, alias one, serve it offline on a SQLite store)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY
from huggingface_hub import ModelCard
from PIL import Image

from imgcls.cli import main
from imgcls.config import build_config
from imgcls.data.build import build_splits
from imgcls.data.fingerprint import data_fingerprint
from imgcls.engine.checkpoint import load_checkpoint, save_checkpoint
from imgcls.evaluate.model_card import MODEL_INDEX_METRICS
from imgcls.evaluate.post_run import train_and_report
from imgcls.evaluate.publish import write_model_card


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Two finished tiny runs (seeds 0 and 1) with their end-of-training report and card."""
    root = tmp_path_factory.mktemp("publish")
    out = []
    for seed in (0, 1):
        cfg = build_config("quickstart", [*TINY, "run.report=true", f"run.seed={seed}", f"run.dir={root / 'runs'}"])
        out.append(train_and_report(cfg).run_dir)
    return out


def _digit_png(path: Path) -> Path:
    from sklearn.datasets import load_digits

    img = (load_digits().images[0] * 16).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


# --------------------------------------------------------------------------------------------------------------------
# Model cards
# --------------------------------------------------------------------------------------------------------------------


def _header(text: str) -> dict:
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert m, "no YAML front matter"
    return yaml.safe_load(m.group(1))


def test_card_header_parses_and_its_numbers_are_the_runs(runs, tmp_path):
    run = runs[0]
    summary = json.loads((run / "summary.json").read_text())
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    ckpt = load_checkpoint(run)
    for path in (run / "MODEL_CARD.md", write_model_card(run, out=tmp_path / "card.md")):  # training's, the command's
        text = path.read_text()
        header = _header(text)  # plain YAML ...
        assert header["library_name"] == "imgcls" and header["pipeline_tag"] == "image-classification"
        results = header["model-index"][0]["results"]
        assert results[0]["dataset"]["name"] == "digits" and results[0]["dataset"]["split"] == "test"
        card = ModelCard.load(path)  # ... and the Hub's schema
        values = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
        expected = {(t, c): metrics[k] for k, t, _, c in MODEL_INDEX_METRICS if metrics.get(k) is not None}
        assert values == expected and len(values) >= 7
        assert values[("accuracy", None)] == pytest.approx(summary["test_acc"], abs=1e-12)
        assert card.data.eval_results[0].dataset_revision == ckpt["data_fingerprint"]["sha256"]
        # the sections, with the run's own facts in them
        for heading in ("Task and classes", "Data and splits", "Preprocessing", "Training recipe", "Metrics",
                        "Limitations seen in the evaluation", "Versions"):  # fmt: skip
            assert f"## {heading}" in card.text
        assert summary["data_fingerprint"] == ckpt["data_fingerprint"]["sha256"] in card.text
        assert f"| torch | {ckpt['versions']['torch']} |" in card.text
        assert "[batch, 1, 16, 16]" in card.text  # the input the model expects
        worst = min(metrics["per_class"].items(), key=lambda kv: (kv[1]["f1"], kv[1]["support"]))
        assert f"**{worst[0]}** {worst[1]['f1']:.3f}" in card.text
        pair = metrics["most_confused"][0]
        assert f"{pair['true']} -> {pair['predicted']} {pair['count']}x" in card.text
        assert f"verdict: **{metrics['calibration_verdict']}**" in card.text
    page = (run / "eval" / "report.html").read_text()
    assert '<section id="model-card">' in page and "Data fingerprint" in page and "<table>" in page


def test_checkpoint_records_versions_commit_and_data(runs):
    ckpt = load_checkpoint(runs[0])
    assert ckpt["format"] == 3 and ckpt["versions"]["imgcls"] and ckpt["versions"]["torch"]
    assert ckpt["git"] is None or re.fullmatch(r"[0-9a-f]{40}", ckpt["git"]["commit"])
    fp = ckpt["data_fingerprint"]
    assert set(fp["splits"]) == {"train", "val", "test"} and fp["splits"]["train"]["images"] == 300


def test_data_fingerprint_follows_the_data_and_the_split():
    base = ["data.name=digits", "data.subset=300"]
    a = data_fingerprint(build_splits(build_config(None, base)))
    assert a == data_fingerprint(build_splits(build_config(None, base)))
    b = data_fingerprint(build_splits(build_config(None, [*base, "data.split_seed=5"])))
    c = data_fingerprint(build_splits(build_config(None, [*base[:1], "data.subset=200"])))
    assert len({a["sha256"], b["sha256"], c["sha256"]}) == 3
    assert c["splits"]["test"] == a["splits"]["test"]  # a smaller train subset leaves the test split as it was


def test_card_of_an_old_checkpoint_says_what_is_unknown(runs, tmp_path):
    """A checkpoint written before format 3 (no versions, git commit or fingerprint) still loads and gets a card."""
    ckpt = load_checkpoint(runs[0])
    old = {k: v for k, v in ckpt.items() if k not in ("versions", "git", "data_fingerprint", "sha256", "path")}
    folder = tmp_path / "old" / "checkpoints"
    save_checkpoint({**old, "format": 2}, folder / "best.pt")
    assert main(["card", str(folder.parent)]) == 0
    text = (folder.parent / "MODEL_CARD.md").read_text()
    assert "Data fingerprint: not recorded" in text and "Not recorded: the checkpoint predates" in text
    assert ModelCard.load(folder.parent / "MODEL_CARD.md").data.eval_results[0].metric_value > 0


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}"
    monkeypatch.setenv("IMGCLS_REGISTRY_URI", uri)
    return uri


def test_register_two_runs_alias_one_and_serve_it(runs, registry, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from imgcls.evaluate.infer import Predictor
    from imgcls.serve.app import create_app

    for run in runs:
        assert main(["registry", "register", str(run), "--name", "digits"]) == 0
    out = capsys.readouterr().out
    assert "as models:/digits/1 in" in out and "as models:/digits/2 in" in out
    assert main(["registry", "alias", "digits", "2", "prod"]) == 0
    assert "models:/digits@prod -> version 2" in capsys.readouterr().out
    assert main(["registry", "list"]) == 0
    listing = capsys.readouterr().out
    assert "prod" in listing and runs[0].name[:20] in listing

    image = _digit_png(tmp_path / "digit.png")
    with TestClient(create_app("models:/digits@prod")) as client:
        meta = client.get("/metadata").json()
        r = client.post("/predict", files={"file": ("digit.png", image.read_bytes(), "image/png")})
    summary = json.loads((runs[1] / "summary.json").read_text())
    assert meta["run"]["test_acc"] == summary["test_acc"]  # the registered run's own numbers travel with it
    assert r.status_code == 200, r.text
    direct = Predictor.from_checkpoint(runs[1])
    probs = direct.predict_proba(direct.load_image(image)[None])
    top = direct.topk(probs, 5)[0]
    served = r.json()["predictions"]
    assert [p["label"] for p in served] == [label for label, _ in top]
    assert np.allclose([p["probability"] for p in served], [p for _, p in top], atol=1e-5)
    # the local copy is the very checkpoint that was registered (hash checked on load)
    assert load_checkpoint("models:/digits@prod")["sha256"] == load_checkpoint(runs[1])["sha256"]
    assert load_checkpoint("models:/digits/1")["sha256"] == load_checkpoint(runs[0])["sha256"]


def test_predict_and_eval_take_registry_references(runs, registry, tmp_path, capsys):
    assert main(["registry", "register", str(runs[0]), "--name", "tiny"]) == 0
    assert main(["registry", "alias", "tiny", "1", "candidate"]) == 0
    image = _digit_png(tmp_path / "digit.png")
    assert main(["predict", "models:/tiny@candidate", str(image), "--topk", "2"]) == 0
    assert main(["eval", "models:/tiny/1", "--no-report", "--batch-size", "128"]) == 0
    out = capsys.readouterr().out
    acc = json.loads((runs[0] / "eval" / "metrics.json").read_text())["accuracy"]
    assert f"accuracy {acc:.4f}" in out and "digit.png: " in out
    # the eval output went to the local copy, not into the run folder or the registry's store
    written = Path(re.search(r"metrics written to (\S+)", out).group(1))
    assert "models" in written.parts and runs[0] not in written.parents
    assert main(["export", "models:/tiny@candidate", "--format", "onnx", "--num-images", "16"]) == 0
    exported = Path(re.search(r"EXPORTED (\S+)", capsys.readouterr().out).group(1))
    assert exported.is_file() and exported.parent.parent == written.parent.parent  # beside the local copy's checkpoint


def test_registry_errors_say_what_exists(runs, registry, capsys):
    assert main(["registry", "register", str(runs[0]), "--name", "digits"]) == 0
    capsys.readouterr()
    for ref, says in (
        ("models:/digits@prod", "model 'digits' has no alias 'prod'; its aliases: none"),
        ("models:/digits/7", "model 'digits' has no version 7; its versions: 1"),
        ("models:/other/1", "no registered model 'other' in sqlite:///"),
        ("models:/digits", "bad model reference 'models:/digits': use models:/NAME@ALIAS or models:/NAME/VERSION"),
    ):
        assert main(["eval", ref]) == 2
        assert says in capsys.readouterr().err
    assert main(["registry", "alias", "digits", "3", "prod"]) == 2
    assert "has no version 3" in capsys.readouterr().err


def test_registry_without_mlflow_says_what_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert main(["registry", "list"]) == 2
    assert "pip install 'imgcls[registry]'" in capsys.readouterr().err
    assert main(["predict", "models:/digits@prod", "x.png"]) == 2
    assert "needs MLflow" in capsys.readouterr().err
