"""The edge's control plane: HAProxy serves `{port}-{sandboxId}.{domain}`, and
`netagent edge` keeps its routing maps equal to the registry. See docs/edge.md."""
