r"""Runs an exported detector on image files (from a checkout; installed: `rethink-tf-predict`).

  python -m export.predict --saved_model=D --image=X.jpg [--image=...] --output=OUT.png

The program and its flags are `rethink_tf/serving/predict.py` (TensorFlow, numpy and
matplotlib only).
"""

from rethink_tf.serving.predict import console_main

if __name__ == "__main__":
  console_main()
