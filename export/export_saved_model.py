r"""Exports a trained detector as a SavedModel (from a checkout; installed: `rethink-tf-export`).

  python -m export.export_saved_model --gin_file=F --checkpoint=C --export_dir=D [...]

The program and its flags are `rethink_tf/serving/export_saved_model.py`.
"""

from rethink_tf.serving.export_saved_model import console_main

if __name__ == "__main__":
  console_main()
