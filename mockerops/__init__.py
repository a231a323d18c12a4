"""mockerops: ship containers to plain Linux servers over SSH."""

__version__ = "0.1.0"
