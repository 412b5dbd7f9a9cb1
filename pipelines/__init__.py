"""Ray Data pipelines: plan -> ingest base shards -> render pair shards (docs/design.md, Stages over shards)."""
