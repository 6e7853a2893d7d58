"""Small store Protocols (ports), one module per domain."""
