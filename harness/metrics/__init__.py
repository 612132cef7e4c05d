"""Quality and fidelity metrics: FID family (torch-fidelity, clean-fid), fidelity to full compute, domain features."""
from harness.metrics.fidelity import compute_fidelity_metrics, full_compute_reference
from harness.metrics.quality import compute_quality_metrics

__all__ = ["compute_quality_metrics", "compute_fidelity_metrics", "full_compute_reference"]
