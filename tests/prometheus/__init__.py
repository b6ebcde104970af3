"""Real-Prometheus test infrastructure (docs/design.md §9): the server harness, its pytest fixture, a scrape target."""
