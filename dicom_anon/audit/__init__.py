"""The hash-chained audit trail: writing, verifying, searching and exporting it."""
