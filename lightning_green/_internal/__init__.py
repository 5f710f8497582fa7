"""Helpers shared by the public modules: argument validation and distributed decisions. Not public API."""
