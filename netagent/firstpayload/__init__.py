"""The layered domain check: the first payload of a sandbox's new TCP 80/443
flow to a DNS-admitted address must name an allowed domain (TLS SNI, HTTP
Host). Pure parts: `parse` (what a first payload names), `verdict` (allowed or
not), `gather` (a flow's segments until the message is whole). Thin I/O:
`checker` (the queue reader). The netlink wire is in firewall/nfqueue.py and
firewall/xt_queue.py."""
