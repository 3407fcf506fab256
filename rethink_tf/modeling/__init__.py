"""Mask R-CNN + FPN: backbone, FPN, RPN, RoI heads, and the model that wires them."""
