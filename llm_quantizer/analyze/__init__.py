"""Architecture analysis from headers only."""
from .architecture import analyze_source
from .plot import plot_layer_distribution

__all__ = ["analyze_source", "plot_layer_distribution"]
