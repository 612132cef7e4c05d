"""LazyDiT benchmark harness: DiT models, a faithful DDIM sampler, method policies, metrics and suites."""
from harness.models import build_model, load_model
from harness.sampling import SampleOutput, sample

__all__ = ["build_model", "load_model", "sample", "SampleOutput"]
__version__ = "0.1.0"
