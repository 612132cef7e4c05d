"""LazyDiT: lazy layers, their training, the inference policies, weight import / export.

Importing this package registers the methods "lazydit", "lazydit-allsteps" and "lazydit-static".
"""
from lazydit import policy, static  # noqa: F401  (register the methods)
from lazydit.layers import LazyLayers
from lazydit.policy import LazyDiTPolicy
from lazydit.static import LazyDiTStaticPolicy
from lazydit.weights import load_lazy_weights, save_lazy_weights

__all__ = ["LazyLayers", "LazyDiTPolicy", "LazyDiTStaticPolicy", "load_lazy_weights", "save_lazy_weights"]
