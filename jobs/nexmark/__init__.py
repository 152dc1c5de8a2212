"""Nexmark queries over the events of :mod:`connectors.nexmark`, and their plain-Python references."""
