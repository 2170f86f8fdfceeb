"""Recording episodes (a safe, compact, documented format) and replaying them."""
