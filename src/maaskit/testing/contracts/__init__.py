"""Contract suites: the same behavioural tests maaskit runs on its own backends, for yours."""
