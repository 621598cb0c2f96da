"""Wire formats: one class each (``format.WireFormat``), found by name in ``registry``. They build
request bodies and read answers; they never send anything."""
