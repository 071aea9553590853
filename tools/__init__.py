"""Offline tools over the daemon's pipeline: replay (pcaps) and trace (one packet, or live)."""
