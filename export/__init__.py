"""SavedModel export and serving clients (depends on rethink_tf, never the reverse)."""
