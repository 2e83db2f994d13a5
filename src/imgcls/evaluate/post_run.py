"""The post-run step of training: the HTML report of the best checkpoint, written after ``train()`` finishes.

The engine does not write reports (it must not depend on the evaluation layer); :func:`train_and_report` passes
:func:`report_step` to :func:`imgcls.engine.train.train` as an ``on_finish`` hook when ``run.report`` is on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcls.config import Config
from imgcls.data.datasets import Splits
from imgcls.engine.checkpoint import load_checkpoint
from imgcls.engine.loop import EvalResult
from imgcls.engine.runs import summary_near
from imgcls.engine.train import RunResult, TrainSetup, train
from imgcls.evaluate.model_card import model_card
from imgcls.evaluate.run_eval import evaluate_split

log = logging.getLogger("imgcls")


def train_and_report(cfg: Config, **kwargs: Any) -> RunResult:
    """:func:`imgcls.engine.train.train`, ending with ``<run>/eval/report.html`` when ``run.report`` is on."""
    hooks = (report_step,) if cfg.run.report else ()
    return train(cfg, on_finish=(*kwargs.pop("on_finish", ()), *hooks), **kwargs)


def report_step(result: RunResult, setup: TrainSetup) -> None:
    """``on_finish`` hook: the report of the run's best checkpoint on its test split (val if there is none)."""
    write_run_report(
        result.run_dir,
        model=setup.model,
        splits=setup.splits,
        eval_transform=setup.loaders.eval_transform,
        device=setup.device,
        tta=setup.cfg.run.test_tta,
        test_outputs=result.test,
    )


def write_run_report(
    run_dir: str | Path,
    *,
    model: nn.Module,
    splits: Splits,
    eval_transform: Callable[[torch.Tensor], torch.Tensor],
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    tta: int = 1,
    strict: bool = False,
    test_outputs: EvalResult | None = None,
) -> Path | None:
    """The end-of-training report: the best checkpoint on the test split (val if there is none).

    Writes ``<run>/eval/metrics.json``, ``<run>/eval/report.html`` and the model card ``<run>/MODEL_CARD.md``. Loads
    ``checkpoints/best.pt`` into ``model``.

    Args:
        run_dir: the run folder.
        model: the trained model (unwrapped: not DDP or compiled).
        splits: the run's splits.
        eval_transform: the run's eval transform.
        device: where to evaluate.
        batch_size: evaluation batch size.
        tta: test-time augmentation views (1 = off), as for the run's own test evaluation.
        strict: raise errors; by default a failing report is logged and training's results stand.
        test_outputs: the run's own test evaluation of best.pt (with outputs): the report uses it rather than
            evaluating again, so its numbers are the summary's.

    Returns:
        The report's path, or None when there is no split to evaluate or it failed.
    """
    run_dir = Path(run_dir)
    split, view = next(
        ((n, v) for n, v in (("test", splits.test), ("val", splits.val)) if v is not None and len(v)), (None, None)
    )
    if view is None:
        return None
    t0 = time.perf_counter()
    try:
        best = run_dir / "checkpoints" / "best.pt"
        ckpt = load_checkpoint(best, map_location=device) if best.is_file() else None
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
        cfg = (ckpt or {}).get("config", {})
        meta = {
            "checkpoint": str(best) if ckpt else None,
            "split": split,
            "model": cfg.get("model", {}).get("name"),
            "dataset": cfg.get("data", {}).get("name"),
        }
        title = f"{meta['model'] or 'model'} on {meta['dataset'] or 'data'} ({split})"
        _, metrics = evaluate_split(
            model,
            view,
            eval_transform,
            classes=splits.classes,
            device=device,
            batch_size=batch_size,
            tta=tta,
            out_dir=run_dir / "eval",
            run_dir=run_dir,
            meta=meta,
            title=title,
            outputs=test_outputs if split == "test" else None,
            config=cfg or None,
            multilabel=splits.multilabel,
            thresholds=(ckpt or {}).get("thresholds"),
            checkpoint=ckpt,
        )
        if ckpt is not None:
            model_card(ckpt, metrics, summary_near(run_dir)).save(run_dir / "MODEL_CARD.md")
    except Exception as e:  # noqa: BLE001 - the run itself is saved; a report bug must not turn it into a failure
        if strict:
            raise
        log.warning("could not write the evaluation report: %s: %s", type(e).__name__, e)
        print(f"warning: could not write the evaluation report ({type(e).__name__}: {e})", flush=True)
        return None
    path = run_dir / "eval" / "report.html"
    views = f", TTA {tta} views" if tta > 1 else ""
    if splits.multilabel:
        print(
            f"report: {path} ({split}{views}: mAP {metrics['map_macro']:.4f}, macro F1 {metrics['f1_macro']:.4f}, "
            f"Hamming loss {metrics['hamming_loss']:.4f}; {time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
        return path
    print(
        f"report: {path} ({split}{views}: accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['f1_macro']:.4f}, "
        f"ECE {metrics['ece']:.4f}; {time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    return path
