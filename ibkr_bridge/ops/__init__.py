"""Operating the bridge: the command line, doctor checks, health endpoint and logging."""
