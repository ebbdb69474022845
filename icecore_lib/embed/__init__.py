"""Embedding spaces and their maps: UMAP (umap-learn), map comparison, clustering, the spaces later notebooks read."""
