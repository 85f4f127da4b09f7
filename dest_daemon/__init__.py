"""`python -m dest_daemon` / `dest-daemon`: wait for an incoming migration and run the VM."""
