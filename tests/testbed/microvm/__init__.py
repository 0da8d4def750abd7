"""MicroVM test harness: guest image builder and VM runners."""
