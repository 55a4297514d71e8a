"""ModelMora: pin, cache and serve machine-learning models on your own machine."""

__version__ = "0.1.0"
