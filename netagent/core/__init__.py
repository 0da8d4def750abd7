"""The core: typed operations, the inventory, the pure planner, the committer,
and the owners of the warm pool, DNS admission and the host table."""
