"""Wire formats: build request bodies and read responses. Adapters never send anything."""
