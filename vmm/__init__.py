"""The VMM core shared by both daemons: run a VM, migrate it out, receive one."""
