"""The SavedModel: the serving module and its signatures, the export, a TensorFlow-only client.

Nothing here may import the training code (`rethink_tf.training`), and `predict` imports only
TensorFlow, numpy and matplotlib, like any client of the SavedModel.
"""
