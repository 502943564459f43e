"""ssgr.compat."""
