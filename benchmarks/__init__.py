"""Benchmarks against TF Model Garden's Mask R-CNN, measured side by side in the same run."""
