"""``shield demo``: a sample service with Shield in front of it."""
