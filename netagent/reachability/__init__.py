"""Reachability: SYN probes of exposed ports, their schedule, and publishing
the results to the routing registry."""
