"""fastflow's benchmark suite (not installed): ``python -m bench`` or ``pytest bench/ --benchmark-only``."""
