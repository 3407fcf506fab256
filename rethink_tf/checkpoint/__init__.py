"""Weights in and out of the model: backbone initialization modes, warm starts, and the import
of other implementations' checkpoints (detectron2, Detectron, torchvision) with its CLIs."""
