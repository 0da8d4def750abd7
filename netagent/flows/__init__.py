"""The flow record: every sandbox connection, when it ends, from conntrack's
destroy events (codec, records: pure; reader, store, recorder: I/O)."""
