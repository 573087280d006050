"""aio-pika adapters: topology, the confirming publisher, the consumer runner."""
