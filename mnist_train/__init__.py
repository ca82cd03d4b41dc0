"""Training and tracking of MNIST classifiers in MLflow."""

__version__ = "0.1.0"
