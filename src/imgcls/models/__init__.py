"""Model registry and the in-house architectures. Importing this package registers every model."""

from imgcls.models import airbench, efficientnet, hybrid, resnet, simple_cnn, timm_models, vit  # noqa: F401
from imgcls.models.base import ImageClassifier
from imgcls.models.factory import create_model
from imgcls.models.registry import MODELS, list_models, register_model

__all__ = ["MODELS", "ImageClassifier", "create_model", "list_models", "register_model"]
