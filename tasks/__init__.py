"""trainflow stages: ingest → clean → augment → normalize → train → evaluate → deploy."""
