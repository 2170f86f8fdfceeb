"""The real-time layer: one rtgym interface for every real-time backend."""
