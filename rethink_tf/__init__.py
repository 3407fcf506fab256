"""rethink_tf: Mask R-CNN + FPN with GroupNorm/SyncBN, from scratch or from ImageNet weights.

A TensorFlow 2 reimplementation of "Rethinking ImageNet Pre-training" (He, Girshick, Dollar,
ICCV 2019). The pipeline reads: data -> modeling -> training -> evaluation -> export.
"""

__version__ = "0.1.0"
