"""The one upstream Shield protects: the connection pool, forwarding, the WebSocket relay."""
