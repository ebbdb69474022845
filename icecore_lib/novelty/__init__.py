"""Novelty: per-particle scores, detectors fitted on training embeddings, the scorer that combines them, their metrics."""
