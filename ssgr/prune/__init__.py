"""ssgr.prune."""
