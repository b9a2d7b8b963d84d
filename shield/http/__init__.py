"""The wire: the public HTTP/1.1 connection and its requests, headers, answers, targets."""
