"""Ray Data pipelines: plan -> ingest base shards -> render pair shards (DESIGN.md §2)."""
