"""The supervisor and the task processes it runs."""
