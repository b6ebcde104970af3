"""Real-Prometheus test infrastructure (DESIGN §9): the server harness, its pytest fixture, a scrape target."""
