"""Assembly and lifecycle: the server, worker processes, reloads."""
