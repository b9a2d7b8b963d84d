"""The config file: a typed model and a loader that keeps line and column for every error."""

from shield.config.loader import load_config, parse_config
from shield.config.model import ShieldConfig

__all__ = ["ShieldConfig", "load_config", "parse_config"]
