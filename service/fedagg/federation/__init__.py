"""The federation core: plan, task assignment, rounds, aggregation and durable state. No network code."""
