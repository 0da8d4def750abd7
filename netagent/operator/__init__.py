"""Operator commands (`netagent status|ls|show|allocate|...`): the API client
plus read-only looks at the kernel, with human tables or --json."""
