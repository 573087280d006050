"""The retrier: policy, decisions and broker-held delays for failed sub-operations."""
