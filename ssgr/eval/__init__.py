"""ssgr.eval."""
