"""The runner's version, reported by /version and in the fleet registry."""

__version__ = "0.1.0"
