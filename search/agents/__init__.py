"""Search agents, one module each, registered by name."""
