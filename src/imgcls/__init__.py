"""imgcls: train, understand and ship image classifiers with PyTorch."""

__version__ = "0.1.0"
