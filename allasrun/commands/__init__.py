"""One module per allasrun command; the CLI parses options and calls their `run`."""
