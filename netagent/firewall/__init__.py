"""nftables: pure plans (elements, ruleset text) and the libnftables driver."""
