"""Backbones (`registry.py`: their interface and registry; one module per architecture)."""
