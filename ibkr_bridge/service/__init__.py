"""The service: the Bridge driver that connects a feed to the durable writer."""
