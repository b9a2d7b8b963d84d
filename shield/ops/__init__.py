"""What operators see and drive: admin listener, ctl API and client, metrics, status page, logs, explain."""
