"""Cited question answering and semantic search over existing tables (Datasette hooks only)."""
