"""Benchmarks against TF Model Garden's Mask R-CNN, measured in the same run (issue: performance)."""
