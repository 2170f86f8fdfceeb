"""A stand-in for the game: the simulator behind a real window, TCP telemetry and key input."""
