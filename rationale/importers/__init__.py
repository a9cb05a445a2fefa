"""Importers that turn real human action logs into records (one module per source format)."""
