"""Serving under load: the engine (compiled executables per budget), the controller (admission,
degradation, fallback), service-time and accuracy tables, and the HTTP server.

May import: inference and below (never evaluation or training).
"""
