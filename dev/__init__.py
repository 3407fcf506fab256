"""Maintenance scripts of the repository (docs generators, the BUILD generator): not installed."""
