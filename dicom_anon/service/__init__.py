"""The service: ingress SCP, durable queue and state store, worker, egress SCU, quarantine."""
