"""Large-DiT (placeholder until implemented)."""
