"""Tether: connect monitoring agents on many nodes to a self-hosted Cloud."""

__version__ = "0.1.0"
