"""Where rows go: schema, PostgreSQL store, JSONL buffer and drain, the durable writer."""
