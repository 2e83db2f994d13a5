"""Interpretability: Grad-CAM, attention maps and rollout, feature embeddings (``imgcls explain ...``)."""
