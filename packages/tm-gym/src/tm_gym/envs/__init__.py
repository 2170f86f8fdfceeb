"""Gymnasium environments: the single-car env and the native vector env."""
