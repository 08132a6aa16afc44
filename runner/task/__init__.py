"""The task process: one OS process per task, publishing its events on the bus."""
