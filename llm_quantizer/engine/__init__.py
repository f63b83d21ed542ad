"""The layer-wise streaming engine and its observers."""
from .observers.base import FinalContext, LayerContext, Observer, make_observer, observer_names, register_observer
from .runner import EngineOptions, LayerwiseEngine
from .skeleton import resolve_device

__all__ = ["EngineOptions", "LayerwiseEngine", "Observer", "LayerContext", "FinalContext", "make_observer",
           "observer_names", "register_observer", "resolve_device"]
