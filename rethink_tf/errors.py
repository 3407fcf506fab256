"""Errors every layer raises: the bottom of the import graph (it imports nothing)."""


class ConfigError(ValueError):
  """A configuration mistake, found before training starts; the message says what to do."""
