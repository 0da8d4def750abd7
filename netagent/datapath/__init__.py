"""Kernel objects: slot netns, veth, tap, addresses, sysctls, conntrack."""
