"""Process-wide set-up shared by every command: logging, GC tuning, secrets."""
