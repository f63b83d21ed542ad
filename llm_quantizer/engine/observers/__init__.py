"""Observers of the streaming engine; importing this package registers the built-in ones."""
from . import activations, divergence, importance, outliers, probes, transfer  # noqa: F401
from .base import FinalContext, LayerContext, Observer, make_observer, observer_names, register_observer

__all__ = ["FinalContext", "LayerContext", "Observer", "make_observer", "observer_names", "register_observer"]
