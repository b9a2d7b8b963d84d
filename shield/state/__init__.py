"""Where Shield keeps state: this process's memory, or Redis shared by every replica."""

from shield.state.backend import StateBackend

__all__ = ["StateBackend"]
