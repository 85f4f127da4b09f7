"""livemig: the user's command line (demo, migrate, replay, analyze, resolve)."""
