"""Evaluations: RULER generation/scoring, lm-eval glue, timing and memory."""
