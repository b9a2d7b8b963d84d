"""The effects of decisions: the gatekeeper, Shield's own answers, bans, challenges, shedding, switches."""
