"""maaskit services: one module per domain (Protocol, value objects, default implementation)."""
