"""Writing results: atomic files, Parquet manifest parts, the output folder's lock."""
