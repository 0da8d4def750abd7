"""Per-sandbox byte and packet accounting (issue #14): the pure ledger and its thin meter."""
