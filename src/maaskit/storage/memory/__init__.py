"""In-process storage backends, one module per domain."""
