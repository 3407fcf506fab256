"""Small pure-TF building blocks: normalization, conv+norm, RoIAlign, NMS, box ops."""
