"""Command-line programs of tm-algos: ``tm-train`` and ``tm-eval``."""
