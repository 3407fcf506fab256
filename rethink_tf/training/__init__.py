"""Schedules, optimizer, losses, the training loop and distribution strategies."""
