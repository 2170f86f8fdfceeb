"""The live-game side: telemetry protocol and client, screen capture, controllers, plugin."""
