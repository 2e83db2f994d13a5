"""Optional Gradio UI for the inference server (``pip install 'imgcls[gradio]'``), mounted at ``/ui``.

``mount_gradio(app, predict_fn, classes)`` adds a ``gr.Interface`` (image in, top-k ``gr.Label`` out) to a FastAPI
app. ``create_app(..., gradio_ui=True)`` passes a ``predict_fn`` that takes the same path as ``POST /predict``:
the image is decoded and resized by the app's ``InferenceService`` and the model runs in its one model thread.
Gradio runs the function in its own worker threads, so the event loop is never blocked.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

GRADIO_MISSING = "the Gradio UI needs gradio: pip install 'imgcls[gradio]'"


def mount_gradio(
    app: Any,
    predict_fn: Callable[[Any], Sequence[float]],
    classes: Sequence[str],
    path: str = "/ui",
    *,
    topk: int = 5,
    title: str = "imgcls",
) -> Any:
    """Mount a Gradio image classifier on ``app`` at ``path`` and return the app.

    Args:
        app: the FastAPI app.
        predict_fn: a PIL image -> class probabilities (length ``len(classes)``); called in Gradio's worker threads.
        classes: class names, in the model's output order.
        path: where the UI is served.
        topk: classes shown in the label.
        title: the page title.

    The prediction function used by the UI (PIL image -> ``{class: probability}``) is kept on
    ``app.state.gradio_predict``.

    Raises:
        RuntimeError: gradio is not installed.
    """
    try:
        import gradio as gr  # optional: the [gradio] extra
    except ImportError as e:
        raise RuntimeError(GRADIO_MISSING) from e

    names = [str(c) for c in classes]
    # gradio 5 renamed allow_flagging to flagging_mode
    no_flag = (
        {"flagging_mode": "never"}
        if "flagging_mode" in inspect.signature(gr.Interface).parameters
        else {"allow_flagging": "never"}
    )

    def classify(image: Any) -> dict[str, float]:
        if image is None:
            return {}
        probs = [float(p) for p in predict_fn(image)]
        return dict(zip(names, probs, strict=True))

    demo = gr.Interface(
        fn=classify,
        inputs=gr.Image(type="pil", label="image"),
        outputs=gr.Label(num_top_classes=max(1, min(topk, len(names))), label="prediction"),
        title=title,
        **no_flag,
    )
    app.state.gradio_predict = classify
    return gr.mount_gradio_app(app, demo, path=path)
