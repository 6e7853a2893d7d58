"""Redis storage backends, one module per domain."""
