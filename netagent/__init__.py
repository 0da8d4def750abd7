"""netagent: networking and egress-policy agent for microVM sandbox hosts."""

__version__ = "0.1.0"
