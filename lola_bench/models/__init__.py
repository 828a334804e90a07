"""Model loading, attention patching and linearization."""
