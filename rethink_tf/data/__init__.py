"""Data: the embedded synthetic dataset, COCO -> TFRecord conversion, the tf.data pipeline."""
