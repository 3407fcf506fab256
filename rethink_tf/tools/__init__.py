"""Command-line tools built on the library (summaries, curve comparison, studies)."""
