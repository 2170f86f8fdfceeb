"""Built-in track files (JSON, format tm-gym-track/1)."""
