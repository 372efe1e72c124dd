"""What the process runs on: the machine's description for reports, and malloc's reuse of large blocks."""
