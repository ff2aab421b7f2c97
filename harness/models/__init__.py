"""Model families and loading: what differs between SD1.5, SDXL and SD3 (families), pipelines by hub id or directory (loading)."""
