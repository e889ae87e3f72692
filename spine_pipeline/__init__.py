"""spine-pipeline: audit archiver and orchestrator for Spine runs."""
