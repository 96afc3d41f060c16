"""Usage metering: recording usage events exactly once, and reading them back aggregated and priced."""
