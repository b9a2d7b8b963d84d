"""Coverage-guided fuzz targets for Shield's request and response paths (see README.md)."""
