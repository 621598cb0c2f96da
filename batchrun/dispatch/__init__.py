"""Sending: the HTTP client, limits, retries and the worker pool."""
