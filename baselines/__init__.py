"""The baselines LazyDiT is compared with: the caching methods, one module each.

Importing this package imports every module in it, which registers its methods in
`harness.methods.METHODS` (and its trainers / calibrators); `caching` holds what they share.
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
