"""`make bench`: what the service costs, measured against its own baselines (docs/BENCHMARKS.md)."""
