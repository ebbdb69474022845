"""Training a model on a dataset bundle into per-particle outputs (logits + embedding, or loss + latent)."""
