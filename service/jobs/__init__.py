"""Jobs: the table is the source of truth; workers claim, heartbeat and report into it."""
