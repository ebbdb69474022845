"""Figures, one submodule per topic; every function returns a matplotlib Figure and saves it when given a path."""
