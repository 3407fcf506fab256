"""Command-line programs of the SavedModel, run from a checkout:
`python -m export.export_saved_model`, `python -m export.predict`. The code they run is
`rethink_tf.serving`.
"""
