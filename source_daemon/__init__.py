"""`python -m source_daemon` / `source-daemon`: boot a simulated VM and run it in real time."""
