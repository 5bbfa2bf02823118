"""Adapters to other libraries; each imports its library on first use (optional extras)."""
