"""ssgr.models."""
